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


# --- planning a sample (monitor/sampling.py) -------------------------------------------------


def test_what_fits_is_read_whole():
    from monitor.sampling import WHOLE, plan

    assert plan({"flood": 40.0, WHOLE: 5.0}, 100, budget=20_000) == {}  # 4,500 of 10,000
    assert plan({"flood": 1e6}, None, budget=20_000) == {}  # no span: nothing to plan from
    assert plan({}, 60, budget=20_000) == {}


def test_a_flood_is_sampled_to_its_share_and_a_rare_class_stays_whole():
    from monitor.sampling import FILL, plan

    rates = {"flood": 10_000.0, FAILED_REQUESTS: 5_000.0, "rare": 0.5}
    weights = plan(rates, 120, budget=20_000)
    assert "rare" not in weights  # its 60 entries are under any share: read, counted exactly
    room = 20_000 * FILL - 0.5 * 120
    for name in ("flood", FAILED_REQUESTS):
        w, volume = weights[name], rates[name] * 120
        assert w & (w - 1) == 0  # a power of two: a heavier sample is within a lighter one
        assert volume / w <= room / 2 < volume / (w // 2)  # the lightest that fits its share
    assert sum(rates[k] * 120 / weights.get(k, 1) for k in rates) <= 20_000 * FILL


def test_what_is_always_read_whole_leaves_the_rest_less_room_but_some():
    from monitor.sampling import FILL, WHOLE, plan

    # deploys and tool output alone over the target: the flood still gets a quarter of it
    weights = plan({"flood": 1_000.0, WHOLE: 200.0}, 60, budget=10_000)
    assert 60_000 / weights["flood"] <= 10_000 * FILL / 4


def test_seconds_of_a_window_are_from_its_later_start():
    from monitor.sampling import MIN_SECONDS, seconds
    from monitor.window import Window
    from tests.helpers import at

    w = Window(start=at(0), end=at(300), received_after=at(240), received_before=at(300))
    assert seconds(w) == 60
    assert seconds(w, until=at(250)) == 10  # a read cut at 250 s covered ten seconds
    assert seconds(w, until=at(100)) == MIN_SECONDS  # late entries only: never zero
    assert seconds(Window(start=at(0), end=at(300))) == 300
    assert seconds(Window()) is None


def _entry(n: int, text: str | None = None, status: int | None = None):
    from monitor.entries import from_json

    return from_json(export_entry(n, 1, text, status=status))


def test_an_entry_read_stands_for_the_lightest_weight_of_its_classes():
    from monitor.sampling import Tally, Weigher

    chosen = Selection(signals=(("flood", "MissingSessionTableError"), ("rare", "TypeError")),
                       tool="Prisma schema loaded from")
    weigher = Weigher(chosen, {"flood": 16, FAILED_REQUESTS: 4}, whole_app=False)
    tally = Tally()
    got = [weigher.weigh(e, tally) for e in (
        _entry(1, "MissingSessionTableError: boom"),
        _entry(2, "MissingSessionTableError then TypeError: x"),  # also read whole by `rare`
        _entry(3, "TypeError: x is undefined"),
        _entry(4, "Prisma schema loaded from prisma/schema.prisma (MissingSessionTableError)"),
        _entry(5, status=503), _entry(6, status=200))]
    assert [e.weight for e in got] == [16, 1, 1, 1, 4, 1]
    assert tally.classes == {"flood": 17, "rare": 2, FAILED_REQUESTS: 4}
    assert tally.whole == 2  # the tool's line and the (probe's) success
    assert tally.rates(2.0) == {"flood": 8.5, "rare": 1.0, FAILED_REQUESTS: 2.0, "": 1.0}


def test_when_the_patterns_do_not_fit_every_app_line_is_one_class():
    from monitor.queries import APP_LINES
    from monitor.sampling import Tally, Weigher

    chosen = Selection(signals=(("flood", "MissingSessionTableError"),), tool="Prisma schema")
    weights = {APP_LINES: 32, FAILED_REQUESTS: 4}
    assert not chosen.by_pattern(chosen.clause(room=100, weights=weights), weights)
    assert chosen.by_pattern(chosen.clause(weights=weights), weights)
    tally = Tally()
    weigher = Weigher(chosen, weights, whole_app=True)
    got = [weigher.weigh(e, tally).weight for e in (
        _entry(1, "GET /app served"), _entry(2, "Prisma schema loaded from x"))]
    assert got == [32, 1] and tally.classes == {APP_LINES: 32}
    # the filter asks for the same one in 32 of every app line
    assert "sample(insertId, 0.03125)" in chosen.clause(room=100, weights=weights)


# --- a flood through the emulator: the real client, the real cycle ----------------------------

FLOOD_START, FLOOD_END, FLOOD_RATE = 30, 270, 100  # failing requests a second, over 4 minutes
RARE = "TypeError: Cannot read properties of undefined (reading 'id')"


def test_a_flood_is_read_as_a_sample_within_budget_and_the_checkpoint_keeps_up(tmp_path):
    """100 failing requests a second (a 500 and its error line each: 24,000 of each) against a
    read budget of 4 pages of 1,000: read whole, every cycle would be cut and the checkpoint
    would fall further behind each time. Sampled, every window is read to its end, the alert
    comes in the first cycle, the count is an estimate within its stated bound, and another
    signal's one match in the middle of it is read and counted exactly."""
    import io
    from datetime import timedelta

    from monitor import notify, sources
    from monitor.check import run_cycle
    from monitor.config import parse_config, unit_name
    from monitor.correlate.model import TransitionKind
    from monitor.emulator import Emulator, SyntheticStore
    from monitor.emulator.synthetic import Failures, TrafficSpec
    from monitor.output import result_json
    from monitor.sources.budget import RateLimiter
    from monitor.store import open_store
    from tests.helpers import T0

    flood = Failures(start=FLOOD_START, end=FLOOD_END, per_second=FLOOD_RATE)
    spec = TrafficSpec(start=T0, duration=480, requests_per_second=20, seed=16,
                       project="bench-prod", service="storefront", revision="storefront-001",
                       episodes=(flood, Failures(start=100, end=101, total=1,
                                                 route="/app/orders", text=RARE)))
    now = [T0]
    with Emulator(SyntheticStore(spec, clock=lambda: now[0]), rest=False) as emulator:
        config = parse_config({
            "project": "bench-prod", "services": ["storefront"],
            "source": {"type": "cloud_logging", "api_endpoint": emulator.grpc_endpoint,
                       "max_pages_per_cycle": 4},
            "poll": {"interval": "60s", "max_lateness": "60s", "first_lookback": "1h"},
            "signals": [{"name": "missing-session-table", "match": "MissingSessionTableError",
                         "resolve_after": "2m"},
                        {"name": "type-error", "match": "TypeError: Cannot read prop",
                         "resolve_after": "2m"}],
            "migrations": {"tool": "prisma"}, "slack": {"channel": "#t", "token": ""},
            "state": {"url": f"sqlite:///{tmp_path}/state.db"}}, env={})
        unit = config.units[0]
        clock = [0.0]
        source = sources.build(config, unit, RateLimiter(1000, clock=lambda: clock[0],
                                                         sleep=lambda s: None))
        store = open_store(config.state.url)
        notifier = notify.build(config, io.StringIO(), timeout=5)
        results = []
        for k in range(1, 9):
            now[0], clock[0] = T0 + timedelta(minutes=k), 60.0 * k
            results.append(run_cycle(config, store, source, notifier, unit=unit_name(unit),
                                     services=unit.services, project=unit.project, now=now[0],
                                     default_lookback=config.poll.first_lookback))
            checkpoint = store.checkpoint(unit_name(unit))
            assert checkpoint is not None and checkpoint.cursor is None  # never cut short
            assert checkpoint.until == now[0]  # no lag: the window was read to its end
        store.close()
    flooded = results[:5]  # cycles at 1..5 minutes read the flood
    assert all(r.stats.sampled.get("missing-session-table", 1) > 1 for r in flooded)
    assert all(r.stats.api_requests - r.stats.probe_requests - r.stats.follow_up_requests <= 4
               for r in results)
    # read whole it is 2 x 24,000 entries, over 4,000 a cycle; sampled, well within
    assert sum(r.stats.entries_read for r in flooded) < 12_000
    # the alert in the first cycle, its count said to be an estimate
    [opened] = [t for t in results[0].transitions if t.incident.signal == "missing-session-table"]
    assert opened.kind is TransitionKind.OPENED
    incident = results[-1].state.incidents[opened.incident.id]
    assert incident.count_estimated and incident.count_bound is not None
    assert abs(incident.count - flood.count) <= incident.count_bound
    assert incident.count_bound < flood.count / 10  # an estimate that says something
    as_json = next(i for i in result_json(results[-1])["incidents"] if i["id"] == incident.id)
    assert as_json["count_estimated"] is True and as_json["count_bound"] == incident.count_bound
    assert result_json(results[1])["stats"]["sampled"]["missing-session-table"] > 1
    # the failed requests read in the sample count as many as they stand for, too
    failed = sum(f.requests_failed for f in results[-1].state.revisions.values())
    assert abs(failed - (flood.count + 1)) <= 2 * incident.count_bound
    [rare] = [i for i in results[-1].state.incidents.values() if i.signal == "type-error"]
    assert rare.count == 1 and not rare.count_estimated
    # once a read finds the flood over, the next one is whole again
    assert results[-1].stats.sampled == {} and results[-1].state.read_rates == {}
