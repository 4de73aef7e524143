"""A flood read as a sample (issue 16, item 3): the query asks for one in `w` of a class's
matches, each match read counts as `w`, and every count shown says when it is an estimate.

The query's `sample(insertId, p)` is evaluated by the emulator's implementation of the query
language (monitor/emulator/query.py: a hash of the insert id decides, so an entry is always in
or always out, as Cloud Logging documents for `sample`)."""

from __future__ import annotations

import math
from dataclasses import replace

from monitor.correlate.model import Incident
from monitor.queries import FAILED_REQUESTS, Selection, read_filter
from tests.helpers import export_entry
from tests.test_incidents import hit, rules, run, the_incident


def _selects(filter_: str, entries: list[dict]) -> set[str]:
    from monitor.emulator import compile_filter

    query = compile_filter(filter_)
    return {e["insertId"] for e in entries if query(e)}


def test_a_sampled_signal_is_read_one_in_w_and_the_others_whole():
    chosen = Selection(signals=(("flood", "MissingSessionTableError"), ("rare", "TypeError")),
                       tool="Prisma schema loaded from")
    floods = [export_entry(n, n / 100, "MissingSessionTableError: boom") for n in range(4000)]
    rare = export_entry(5000, 1, "TypeError: x is undefined")
    tool = export_entry(5001, 2, "Prisma schema loaded from prisma/schema.prisma")
    failed = [export_entry(6000 + n, n / 100, status=500) for n in range(2000)]
    f = read_filter(["spector"], project="spector-prod", start=None, end=None,
                    selection=chosen, weights={"flood": 8, FAILED_REQUESTS: 4})
    got = _selects(f, [*floods, rare, tool, *failed])
    assert {rare["insertId"], tool["insertId"]} <= got  # never sampled
    kept = len(got & {e["insertId"] for e in floods})
    assert abs(kept - 4000 / 8) < 4 * math.sqrt(4000 / 8)  # about one in eight
    kept_failed = len(got & {e["insertId"] for e in failed})
    assert abs(kept_failed - 2000 / 4) < 4 * math.sqrt(2000 / 4)
    # a smaller sample is among the larger one's entries: the same hash decides both
    f16 = read_filter(["spector"], project="spector-prod", start=None, end=None,
                      selection=chosen, weights={"flood": 16})
    assert _selects(f16, floods) <= _selects(f, floods)


def test_weights_of_one_ask_for_no_sample():
    chosen = Selection(signals=(("a", "A"),))
    assert "sample(" not in chosen.clause(weights={"a": 1})
    assert "sample(" in chosen.clause(weights={"a": 2})


def test_weighted_matches_make_an_estimate_with_its_bound():
    hits = [hit(1 + n / 100) for n in range(10)]
    weighted = [replace(h, weight=16) for h in hits]
    incident = the_incident(run(weighted, now=2))
    assert incident.count == 160
    assert incident.count_estimated
    assert incident.count_variance == 10 * (16 * 16 - 16)
    assert incident.count_bound == math.ceil(1.96 * math.sqrt(2400))
    assert incident.count_text() == "~160 (estimated from a sample of the matches, \u00b197)"
    assert incident.count_text("error") == ("~160 errors (estimated from a sample of the matches, "
                                      "\u00b197)")
    assert incident.to_json()["count_estimated"] is True
    assert incident.to_json()["count_bound"] == incident.count_bound
    assert sum(n for b in incident.buckets.values() for n in b.values()) == 160
    # what the store keeps brings the estimate back
    again = Incident.from_state(incident.to_state())
    assert (again.count, again.count_variance, again.count_bound) == (160, 2400, 97)


def test_matches_read_whole_stay_exact():
    incident = the_incident(run([hit(1), hit(2)], now=3, r=rules()))
    assert incident.count == 2 and not incident.count_estimated
    assert incident.count_bound is None
    assert incident.count_text() == "2" and incident.count_text("error") == "2 errors"
    assert incident.to_json()["count_estimated"] is False


def test_a_late_hit_outside_the_window_does_not_lend_its_weight():
    # Pending matches kept under a higher `open_after` (the config was changed since), and a
    # late sampled match older than their window: they open the incident without it, one each.
    from monitor.correlate.state import State
    from tests.test_incidents import SIG, SVC, at

    state = State()
    state.pending[(SVC, SIG)] = [(at(m), "r42", "MissingSessionTableError", None)
                                 for m in (10, 11, 12)]
    outcome = run([replace(hit(1), weight=16)], now=13, state=state, r=rules(open_after=2))
    incident = the_incident(outcome)
    assert incident.count == 3 and not incident.count_estimated
    assert incident.first_seen == at(10)
