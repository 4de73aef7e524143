"""Slack delivery is exactly once and in order, under injected faults and under kill -9.

What is proved, and how (everything is judged from Slack's side: the local Slack server's
`messages(channel)` and its log of calls, never from the monitor's own counters):

1. Randomized faults (`test_randomized_faults_deliver_every_message_once_in_order`). For each of
   SEEDS seeds, a fresh SQLite store goes through real check cycles (`run_cycle`: the demo export
   plus a second service that has an incident and, a day later, its regression; polled every 6 h
   of event time: 4 incidents, 51 messages) against the local Slack server, which injects faults
   chosen by the seed into chat.postMessage, chat.update and the look-ups `find` makes
   (conversations.list, .history, .replies): 429 with a Retry-After, HTTP 5xx, `internal_error`,
   an answer lost after Slack applied the call (`lost`, what `delay_next(after=True)` does), and a
   request that hangs past the client timeout and is then dropped (`hang`: a timeout without
   effect). After each cycle, `drain` runs again with a fake clock that usually jumps past every
   backoff and sometimes does not (held-back messages must then wait). Faults stop a few rounds
   after the last cycle; the outbox must then empty within a bounded number of rounds. Asserted
   per seed: every message's effect is in Slack exactly once (posts counted by the outbox key in
   their metadata, both in the successful chat.postMessage calls and in the channel), every reply
   is in its incident's thread in transition order, each root shows the text of its incident's
   last update, and no call of an incident took effect before its predecessor's (an update may
   only be applied again right after itself: it is idempotent). The totals over all seeds are
   printed (messages, faults by kind, answers lost and recovered by `find`, duplicates, lost).
2. kill -9 at each point of a send (`test_kill_9_at_each_point_then_restart`): `monitor once`
   runs as a subprocess on a small incident (5 messages) and is SIGKILLed inside the cycle's one
   transaction, after the commit but before any send, while a post hangs before Slack applied it,
   after Slack applied a post / a reply / an edit but before the answer arrived, and after the
   answer but before the outbox marked it sent (a hook in the subprocess pauses there: killing in
   that millisecond by timing alone is not reliable). The store is checked to be in the state the
   kill point implies, then `monitor once` runs again normally; Slack must then hold exactly what
   an undisturbed run delivers, each message once and in order, and `monitor status` an empty
   outbox.
3. Two cases these tests found, now fixed and kept as regressions: a post still in flight at
   Slack when the monitor is killed must not be posted again by the restart (the outbox waits out
   the client timeout before looking for it); a regression alert whose earlier thread is held
   back by a fault must wait for it, and link it.

Bounded: client timeouts of TIMEOUT seconds in process, every subprocess wait has a timeout, only
127.0.0.1 is used.
"""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

from monitor.check import run_cycle
from monitor.config import Config, parse_config
from monitor.correlate.state import State
from monitor.entries import LogEntry, from_json
from monitor.messages import Action, Message
from monitor.notify.outbox import Delivery, HoldReason, drain
from monitor.notify.slack import SlackNotifier
from monitor.sources.file import FileSource
from monitor.store import open_store
from monitor.store.base import CycleRecord, Store
from monitor.window import ReadStats, Window
from tests.helpers import T0, export_entry, small_incident
from tests.slack_server import Call, SlackServer
from tests.test_outbox import FakeClock

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"
CHANNEL = "#spector-alerts"

SEEDS = range(40)
WORKERS = 4
TIMEOUT = 0.25  # the in-process client's timeout (s): a lost answer costs this much wall time
STUCK = TIMEOUT + 0.35  # how long a `lost` answer or a `hang` keeps the server's thread
FAULTY_AFTER_LAST_CYCLE = 4  # rounds that still inject faults once the cycles are done
MAX_CLEAN_ROUNDS = 40  # then Slack is healthy: the outbox must be empty by then
# Fake-clock steps between drains: usually past any backoff (MAX_BACKOFF is 5 min), sometimes
# not, so that a message not yet due has to wait.
STEPS = (timedelta(minutes=6), timedelta(minutes=6), timedelta(minutes=6), timedelta(seconds=1))
METHODS = {"chat.postMessage": 5, "chat.update": 3, "conversations.history": 2,
           "conversations.replies": 2, "conversations.list": 2}
# `find`'s look-ups only happen when a message is in doubt: a fault planned for one waits for it
# (one at a time) instead of expiring with its round.
LOOKUPS = {"conversations.history", "conversations.replies", "conversations.list"}
KINDS = {"ratelimited": 3, "http_5xx": 2, "internal_error": 2, "lost": 2, "hang": 1.5}
SUBPROCESS_TIMEOUT = 30.0


# --- a Slack server that breaks on a plan -------------------------------------------------------

class FaultySlack(SlackServer):
    """The local Slack server, plus a per-method plan of faults for the next calls.

    `fail_next` and `delay_next` queue a fault for the next call of a method, whenever it comes;
    a plan entry is turned into that fault by the request it is meant for, so a randomized test can
    plan faults for one round and drop what that round did not use (`clear_plan`). `pass` lets a
    call through, so a fault can target the n-th call.
    Kinds: `ratelimited` (429 + Retry-After), `http_5xx`, `internal_error` (through `fail_next`);
    `lost`: Slack applies the call, then the answer is held past the client's timeout (what
    `delay_next(after=True)` does; the wait is outside `wait_settled`'s count, since the call has
    taken effect); `hang`: held past the client's timeout, then dropped: no effect (unlike
    `delay_next` without `after`, which applies the call once the delay is over).
    `wait_settled` waits until no request is between its arrival and its effect, so that a
    retry is never raced by a stray slow request of the previous round.
    """

    def __init__(self) -> None:
        super().__init__(channels=[CHANNEL])  # the channel exists before anything is posted
        self._httpd.handle_error = self._quiet  # type: ignore[method-assign]
        self._cond = threading.Condition()
        self._plan: dict[str, list[tuple[str, float]]] = {}
        self._pending = 0
        self.fired: Counter[tuple[str, str]] = Counter()  # (method, kind) -> faults injected
        self.arrived: list[str] = []  # every request's method, as it arrives (hangs included)

    def _quiet(self, request: Any, client_address: Any) -> None:
        """A late answer to a client that gave up fails to write: expected, not worth a trace."""
        if not isinstance(sys.exc_info()[1], ConnectionError):
            ThreadingHTTPServer.handle_error(self._httpd, request, client_address)

    def plan(self, method: str, kind: str, arg: float = 0.0) -> None:
        with self._cond:
            self._plan.setdefault(method, []).append((kind, arg))

    def clear_plan(self, keep: Iterable[str] = ()) -> None:
        """Drop the faults not used yet, except for the methods in `keep`."""
        with self._cond:
            for method in set(self._plan) - set(keep):
                del self._plan[method]

    def planned(self, method: str) -> int:
        with self._cond:
            return len(self._plan.get(method, []))

    def wait_settled(self, timeout: float = 10.0) -> None:
        with self._cond:
            assert self._cond.wait_for(lambda: self._pending == 0, timeout), \
                "a request to the Slack server never completed"

    def _settle(self) -> None:
        with self._cond:
            self._pending -= 1
            self._cond.notify_all()

    def handle(self, method: str, params: dict[str, Any],
               headers: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
        with self._cond:
            self.arrived.append(method)
            queue = self._plan.get(method)
            kind, arg = queue.pop(0) if queue else ("pass", 0.0)
            if kind != "pass":
                self.fired[(method, kind)] += 1
            self._pending += 1
        if kind == "hang":
            self._settle()  # it will never take effect
            time.sleep(arg)
            return 504, {"Content-Type": "text/html"}, b"<html>504 Gateway Time-out</html>"
        try:
            # The client sends one request at a time, so the fault queued here is the one this
            # request meets (stragglers are settled before each round).
            if kind == "ratelimited":
                self.fail_next(method, status=429, retry_after=arg)
            elif kind == "http_5xx":
                self.fail_next(method, status=int(arg))
            elif kind == "internal_error":
                self.fail_next(method, error="internal_error")
            response = super().handle(method, params, headers)
        finally:
            self._settle()
        if kind == "lost":
            time.sleep(arg)
        return response


# --- what Slack shows, against what the outbox was given ----------------------------------------

def _meta_key(message_or_params: dict[str, Any]) -> str | None:
    payload = (message_or_params.get("metadata") or {}).get("event_payload") or {}
    key = payload.get("key")
    return key if isinstance(key, str) else None


def _incident_of(key: str) -> str:
    return key.rsplit("#", 1)[0]


def _took_effect(call: Call) -> bool:
    return call.status == 200 and call.error is None


def _effect(message: Message) -> tuple[str, Any]:
    """What the message's call looks like in Slack's log: a post's key, an edit's text."""
    if message.action is Action.UPDATE_ROOT:
        return ("update", message.text)
    return ("post", message.key)


@dataclass
class Audit:
    problems: list[str] = field(default_factory=list)
    duplicates: int = 0  # extra copies of a post, by outbox key
    lost: int = 0  # messages whose effect never reached Slack
    unlinked: int = 0  # regression messages sent without the link to the earlier thread

    @property
    def ok(self) -> bool:
        return not self.problems and self.duplicates == 0 and self.lost == 0


def audit_delivery(slack: SlackServer, expected: list[Message], store: Store | None = None,
                   channel: str = CHANNEL) -> Audit:
    """Compare Slack's channel and call log with the messages the outbox was given, in order."""
    audit = Audit()
    incidents: dict[str, list[Message]] = {}
    for m in expected:
        incidents.setdefault(m.incident_id, []).append(m)
    posts = [m for m in expected if m.action is not Action.UPDATE_ROOT]
    wanted = {m.key for m in posts}

    # 1. The channel as people see it: every post once, replies in their thread, in order.
    view = slack.messages(channel)
    roots = [m for m in view if m.get("subtype") != "thread_broadcast"]
    in_view = Counter(_meta_key(m) for m in roots)
    in_view.update(_meta_key(r) for m in roots for r in m["replies"])
    strays = set(in_view) - wanted
    if strays:
        audit.problems.append(f"unexpected messages in Slack: {sorted(map(str, strays))}")
    # 2. The call log: a post that took effect twice is a duplicate even if one was deleted.
    effective = [c for c in slack.calls if _took_effect(c)
                 and c.method in ("chat.postMessage", "chat.update")]
    posted = Counter(_meta_key(c.params) for c in effective if c.method == "chat.postMessage")
    audit.duplicates = max(sum(n - 1 for k, n in in_view.items() if k in wanted),
                           sum(n - 1 for k, n in posted.items() if k in wanted))
    audit.lost = len(wanted - (set(in_view) & set(posted)))  # updates are counted below

    # Every root, duplicates too, so that each edit is attributed to its incident.
    root_ts = {str(r["ts"]): _incident_of(str(_meta_key(r))) for r in roots}
    for incident, messages in incidents.items():
        first = messages[0]
        if first.action is not Action.POST_ROOT:
            audit.problems.append(f"{incident}: its first message is {first.action.value}")
            continue
        found = [r for r in roots if _meta_key(r) == first.key]
        if len(found) != 1:
            audit.problems.append(f"{incident}: {len(found)} root messages")
            continue
        root = found[0]
        replies = [_meta_key(r) for r in root["replies"]]
        want = [m.key for m in messages if m.action is Action.REPLY]
        if replies != want:
            audit.problems.append(f"{incident}: thread replies {replies}, expected {want}")
        broadcast = {m.key for m in messages if m.action is Action.REPLY and m.broadcast}
        shown = {_meta_key(m) for m in view if m.get("subtype") == "thread_broadcast"}
        if shown & set(want) != broadcast:
            audit.problems.append(f"{incident}: replies shown in the channel "
                                  f"{sorted(map(str, shown & set(want)))}, expected {broadcast}")
        current = [m for m in messages if m.action is Action.UPDATE_ROOT] or [first]
        if root["text"] != current[-1].text:
            audit.problems.append(f"{incident}: the root shows {root['text'][:60]!r}, not the "
                                  f"last update {current[-1].text[:60]!r}")
        if first.link_thread_of and "Previous incident thread" not in json.dumps(root["blocks"]):
            audit.unlinked += 1
        if store is not None:
            thread = store.thread(incident)
            if thread is None or thread.ts != root["ts"]:
                audit.problems.append(f"{incident}: the store's thread {thread} is not the root "
                                      f"{root['ts']}")

    # 3. Order: per incident, the calls that took effect follow the transitions' order. Only an
    # update may take effect again, right after itself (a retry of an edit whose answer was lost).
    done: dict[str, int] = dict.fromkeys(incidents, 0)
    for call in effective:
        if call.method == "chat.postMessage":
            key = _meta_key(call.params)
            incident = _incident_of(key) if key is not None else "?"
            effect: tuple[str, Any] = ("post", key)
        else:
            incident = root_ts.get(str(call.params.get("ts")), "?")
            effect = ("update", call.params.get("text"))
        messages = incidents.get(incident)
        if messages is None:
            audit.problems.append(f"a {call.method} for an unknown incident {incident}")
            continue
        n = done[incident]
        if n < len(messages) and _effect(messages[n]) == effect:
            done[incident] = n + 1
        elif not (n > 0 and messages[n - 1].action is Action.UPDATE_ROOT
                  and _effect(messages[n - 1]) == effect):
            audit.problems.append(f"{incident}: {call.method} out of order after message {n} "
                                  f"of {len(messages)}")
    for incident, messages in incidents.items():
        missing = [m for m in messages[done[incident]:] if m.action is Action.UPDATE_ROOT]
        audit.lost += len(missing)  # posts not applied are counted above
    return audit


# --- 1. randomized faults -----------------------------------------------------------------------

class ListSource:
    """The same entries as a file replay, parsed once (the source is not what is under test)."""

    live = False

    def __init__(self, entries: list[LogEntry]) -> None:
        self.entries = entries

    def read(self, window: Window, stats: ReadStats) -> Iterator[LogEntry]:
        for entry in self.entries:
            stats.entries_read += 1
            if ((window.start is None or entry.timestamp >= window.start)
                    and (window.end is None or entry.timestamp <= window.end)):
                yield entry


def _checkout_entries() -> list[dict[str, Any]]:
    """A second service: an incident on 2025-12-06, resolved, and its regression a day later.
    Each burst straddles a 6-hour poll, so its messages come over several cycles."""
    out: list[dict[str, Any]] = []
    n = 700_000
    for start in (datetime(2025, 12, 6, 12, 30, tzinfo=UTC),
                  datetime(2025, 12, 7, 13, 0, tzinfo=UTC)):
        t = start
        for k in range(46):
            seconds = (t - T0).total_seconds()
            if k < 16:
                out.append(export_entry(n, seconds, "MissingSessionTableError: Prisma session "
                                        "table does not exist.", service="checkout",
                                        revision="checkout-00007-abc"))
                n += 1
            out.append(export_entry(n, seconds, service="checkout", revision="checkout-00007-abc",
                                    status=500 if k < 16 else 200))
            n += 1
            t += timedelta(minutes=10)
    return out


@dataclass(frozen=True)
class Scenario:
    config: Config
    source: ListSource
    polls: list[datetime]


@pytest.fixture(scope="module")
def scenario() -> Scenario:
    doc = yaml.safe_load((EXAMPLES / "config.yaml").read_text())
    doc["services"] = ["spector", "checkout"]
    doc["source"] = {"type": "file", "path": str(EXAMPLES / "spector-incident.json")}
    config = parse_config(doc)
    demo = list(FileSource(EXAMPLES / "spector-incident.json").read(Window(), ReadStats()))
    checkout = [from_json(d) for d in _checkout_entries()]
    assert not {e.key for e in demo} & {e.key for e in checkout}
    polls, t = [], datetime(2025, 12, 4, 20, 0, tzinfo=UTC)
    end = datetime(2025, 12, 13, 2, 14, 25, 999999, tzinfo=UTC)  # the newest demo entry
    while t < end:
        t = min(t + timedelta(hours=6), end)
        polls.append(t)
    return Scenario(config, ListSource(demo + checkout), polls)


@dataclass
class SeedRun:
    seed: int
    expected: list[Message]
    audit: Audit
    queued: int  # left in the outbox at the end
    rounds: int
    fired: Counter[tuple[str, str]]
    found: int  # messages in doubt found already delivered by `find`
    timeouts: int  # answers the client gave up on (lost, hung, or just slow)


def _fault(rng: random.Random) -> tuple[str, str, float]:
    method = rng.choices(list(METHODS), weights=list(METHODS.values()))[0]
    kind = rng.choices(list(KINDS), weights=list(KINDS.values()))[0]
    arg = {"ratelimited": float(rng.choice((1, 2, 3))),
           "http_5xx": float(rng.choice((500, 502, 503))),
           "lost": STUCK, "hang": STUCK}.get(kind, 0.0)
    return method, kind, arg


def run_seed(seed: int, scenario: Scenario, db: Path) -> SeedRun:
    rng = random.Random(seed)
    store = open_store(f"sqlite:///{db}")
    expected: list[Message] = []
    counts = Counter[str]()

    def tally(delivery: Delivery) -> None:
        counts["found"] += delivery.found
        counts["timeouts"] += sum("did not answer in time" in e for e in delivery.errors)

    try:
        with FaultySlack() as slack:
            clock = datetime.now(UTC)  # the fake clock of the drains between cycles
            polls = list(scenario.polls)
            faulty_until = len(polls) + FAULTY_AFTER_LAST_CYCLE
            rounds = 0
            while (polls or store.queued()) and rounds < faulty_until + MAX_CLEAN_ROUNDS:
                rounds += 1
                if rounds <= faulty_until:
                    for _ in range(rng.choices((0, 1, 2), weights=(35, 40, 25))[0]):
                        method, kind, arg = _fault(rng)
                        if method not in LOOKUPS or not slack.planned(method):
                            slack.plan(method, kind, arg)
                # A new notifier each round, as each `monitor once` has (its channel id cache
                # is empty: a root in doubt makes it call conversations.list again). A float
                # timeout works (urllib takes one) and keeps lost answers cheap.
                notifier = SlackNotifier(slack.token, base_url=slack.base_url, min_interval=0,
                                         timeout=TIMEOUT)  # type: ignore[arg-type]
                if polls:  # a real cycle: read, correlate, commit to the outbox, drain
                    slack.wait_settled()
                    cycle = run_cycle(scenario.config, store, scenario.source, notifier,
                                      unit="default", services=scenario.config.units[0].services,
                                      project=scenario.config.project, now=polls.pop(0))
                    expected += cycle.messages
                    tally(cycle.delivery)
                slack.wait_settled()
                tally(drain(store, notifier, now=clock))
                slack.clear_plan(keep=LOOKUPS if rounds < faulty_until else ())
                clock += rng.choice(STEPS)
            slack.wait_settled()
            return SeedRun(seed, expected, audit_delivery(slack, expected, store),
                           len(store.queued()), rounds, slack.fired, counts["found"],
                           counts["timeouts"])
    finally:
        store.close()


def test_randomized_faults_deliver_every_message_once_in_order(scenario, tmp_path, capsys):
    started = time.monotonic()
    # Seeds run side by side: most of a seed's time is spent waiting for client timeouts.
    with ThreadPoolExecutor(max_workers=WORKERS) as pool:
        runs = list(pool.map(lambda seed: run_seed(seed, scenario, tmp_path / f"seed{seed}.db"),
                             SEEDS))
    elapsed = time.monotonic() - started
    fired = sum((r.fired for r in runs), Counter[tuple[str, str]]())
    by_kind, by_method = Counter[str](), Counter[str]()
    for (method, kind), n in fired.items():
        by_kind[kind] += n
        by_method[method] += n
    totals = {
        "seeds": len(runs),
        "messages": sum(len(r.expected) for r in runs),
        "faults": sum(fired.values()),
        "by kind": dict(sorted(by_kind.items())),
        "by method": dict(sorted(by_method.items())),
        "client timeouts": sum(r.timeouts for r in runs),
        "in doubt, recovered by find": sum(r.found for r in runs),
        "duplicates": sum(r.audit.duplicates for r in runs),
        "lost": sum(r.audit.lost for r in runs),
        "regression alerts without their link": sum(r.audit.unlinked for r in runs),
        "seeds with one": [r.seed for r in runs if r.audit.unlinked],
        "max rounds": max(r.rounds for r in runs),
        "seconds": round(elapsed, 1),
    }
    summary = "delivery under faults: " + ", ".join(f"{k}={v}" for k, v in totals.items())
    with capsys.disabled():  # shown in every run, -q included, not only on failure
        print(f"\n{summary}")

    failures = [f"seed {r.seed}: duplicates={r.audit.duplicates} lost={r.audit.lost} "
                f"queued={r.queued} {[p[:160] for p in r.audit.problems[:3]]}"
                for r in runs if not r.audit.ok or r.queued]
    assert not failures, "\n".join([summary, *failures])
    # The same stream every time: 4 incidents from real transitions.
    assert all([m.key for m in r.expected] == [m.key for m in runs[0].expected] for r in runs)
    assert len(runs[0].expected) == 51
    assert len({m.incident_id for m in runs[0].expected}) == 4
    # The test did what it claims: every kind of fault, on every method, many times over; and
    # answers were lost after Slack applied the call, and recovered by looking, not reposting.
    assert all(by_kind[kind] >= 10 for kind in KINDS), by_kind
    assert all(by_method[method] >= 5 for method in METHODS), by_method
    assert fired[("chat.postMessage", "lost")] >= 5 and fired[("chat.update", "lost")] >= 5
    assert totals["in doubt, recovered by find"] >= 5


# --- 2. kill -9 at each point of a send ---------------------------------------------------------

# Runs `monitor once` with a pause at one point, announced by writing `marker`: killing inside
# a transaction, or between Slack's answer and the bookkeeping, cannot be timed from outside.
HOOKED = """
import sys, time
from pathlib import Path

config, point, marker = sys.argv[1:4]
def pause():
    Path(marker).write_text(point)
    time.sleep(60)

from monitor.store.sqlite import SQLiteStore
if point == "commit":  # inside commit_cycle's transaction, between its writes
    set_meta = SQLiteStore._set_meta
    def hooked_set_meta(db, key, value):
        set_meta(db, key, value)
        if key.startswith("correlate"):
            pause()
    SQLiteStore._set_meta = staticmethod(hooked_set_meta)
elif point == "drain":  # the cycle is committed; nothing is sent yet
    import monitor.check
    monitor.check.drain = lambda *args, **kwargs: pause()
elif point.startswith("mark_sent:"):  # Slack answered the n-th send; not marked sent yet
    nth, calls, mark_sent = int(point.split(":")[1]), [], SQLiteStore.mark_sent
    def hooked_mark_sent(self, queued, thread, lease=None):
        calls.append(queued)
        if len(calls) == nth:
            pause()
        mark_sent(self, queued, thread, lease)
    SQLiteStore.mark_sent = hooked_mark_sent
from monitor.cli import main
main(["once", "--config", config], prog_name="monitor")
"""


def crash_config(tmp: Path, slack: SlackServer, timeout: str = "1s") -> Path:
    (tmp / "logs.json").write_text(json.dumps(small_incident()))
    config = tmp / "config.yaml"
    config.write_text(
        "services: [spector]\nproject: spector-prod\n"
        f"source: {{type: file, path: '{tmp / 'logs.json'}'}}\n"
        "signals: [{name: missing-session-table, match: MissingSessionTableError}]\n"
        f"state: {{url: 'sqlite:///{tmp}/state.db'}}\n"
        f"slack: {{token: {slack.token}, base_url: '{slack.base_url}', min_interval: 0s, "
        f"timeout: {timeout}, channel: '{CHANNEL}'}}\n")
    return config


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("MONITOR_CONFIG", "SLACK_BOT_TOKEN", "PYTHONPATH")}
    return {**env, "PYTHONPATH": str(REPO)}


def start_monitor(config: Path, hook: str | None = None) -> subprocess.Popen[bytes]:
    if hook is None:
        args = [sys.executable, "-m", "monitor", "once", "--config", str(config)]
    else:
        args = [sys.executable, "-c", HOOKED, str(config), hook, str(config.parent / "marker")]
    with (config.parent / "killed.log").open("ab") as log:
        return subprocess.Popen(args, cwd=REPO, env=_env(), stdout=log, stderr=log)


def monitor(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "monitor", *args, "--config", str(config)],
                          cwd=REPO, env=_env(), capture_output=True, text=True,
                          timeout=SUBPROCESS_TIMEOUT)


def wait_for(condition: Callable[[], object], proc: subprocess.Popen[bytes], what: str,
             log: Path, timeout: float = SUBPROCESS_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None:
            raise AssertionError(f"monitor exited ({proc.returncode}) before {what}: "
                                 f"{log.read_text(errors='replace')[-2000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            proc.wait(timeout=10)
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.005)


def kill_9(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=10) == -signal.SIGKILL


def restart_until_done(config: Path) -> subprocess.CompletedProcess[str]:
    """`monitor once` with no faults, until it completes (0: resolved, 1: open)."""
    for _ in range(3):
        done = monitor(config, "once")
        if done.returncode in (0, 1):
            return done
    raise AssertionError(f"monitor once did not complete: {done.returncode} {done.stderr[-2000:]}")


def outbox_rows(tmp: Path) -> list[tuple[str, int, bool]]:
    """(key, attempts, sent) per outbox row, in order; [] when nothing was committed."""
    db = sqlite3.connect(tmp / "state.db")
    try:
        if not db.execute("SELECT 1 FROM sqlite_master WHERE name = 'outbox'").fetchall():
            return []
        rows = db.execute("SELECT key, attempts, sent_at IS NOT NULL FROM outbox ORDER BY id")
        return [(k, a, bool(s)) for k, a, s in rows]
    finally:
        db.close()


def posted_keys(slack: SlackServer) -> list[str | None]:
    view = slack.messages(CHANNEL)
    return [_meta_key(m) for m in view] + [_meta_key(r) for m in view for r in m["replies"]]


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> list[Message]:
    """The small incident's messages, from an undisturbed run: what every restart must end with."""
    tmp = tmp_path_factory.mktemp("reference")
    with SlackServer() as slack:
        config = crash_config(tmp, slack)
        done = monitor(config, "once")
        assert done.returncode == 0, done.stderr
        db = sqlite3.connect(tmp / "state.db")
        rows = db.execute("SELECT payload, sent_at FROM outbox ORDER BY id").fetchall()
        db.close()
        messages = [Message.from_json(json.loads(payload)) for payload, _ in rows]
        assert all(sent for _, sent in rows)
        assert audit_delivery(slack, messages).ok
    assert [m.action for m in messages] == [Action.POST_ROOT, Action.REPLY, Action.UPDATE_ROOT,
                                            Action.REPLY, Action.UPDATE_ROOT]
    return messages


@dataclass(frozen=True)
class Crash:
    """Where to kill: the faults to arm, a hook, when the point is reached, and the state the
    store must show afterwards as (attempts, sent) per message (None: nothing committed)."""

    arm: Callable[[FaultySlack], None] = lambda slack: None
    hook: str | None = None
    reached: Callable[[FaultySlack, list[Message], Path], bool] = lambda s, r, t: False
    rows: list[tuple[int, bool]] | None = None
    in_doubt: int | None = None  # the message the restart must look for before sending it
    slack_has: int = 0  # messages of the reference already applied in Slack at the kill


def _marker(slack: FaultySlack, ref: list[Message], tmp: Path) -> bool:
    return (tmp / "marker").exists()


def _posted(n: int) -> Callable[[FaultySlack, list[Message], Path], bool]:
    return lambda slack, ref, tmp: ref[n].key in posted_keys(slack)


def _edited(n: int) -> Callable[[FaultySlack, list[Message], Path], bool]:
    return lambda slack, ref, tmp: [m["text"] for m in slack.messages(CHANNEL)
                                    if _meta_key(m) == ref[0].key] == [ref[n].text]


def _lose_second_post(slack: FaultySlack) -> None:
    """The reply is the second post: `delay_next` would hit the root, a plan can skip it."""
    slack.plan("chat.postMessage", "pass")
    slack.plan("chat.postMessage", "lost", 10)


CRASHES = {
    # Inside the one transaction of the cycle: nothing of it was saved, nothing sent.
    "inside the cycle's commit": Crash(hook="commit", reached=_marker, rows=None),
    # Committed, nothing sent yet: all five queued, never attempted.
    "after the commit, before any send": Crash(hook="drain", reached=_marker,
                                               rows=[(0, False)] * 5),
    # (a) The root's post is on its way and never reaches Slack.
    "root post in flight, never applied": Crash(
        arm=lambda slack: slack.plan("chat.postMessage", "hang", 10),
        reached=lambda slack, ref, tmp: "chat.postMessage" in slack.arrived,
        rows=[(1, False)] + [(0, False)] * 4, in_doubt=0),
    # (b) Slack applied the call; its answer is lost with the process.
    "root posted, answer not received": Crash(
        arm=lambda slack: slack.delay_next("chat.postMessage", 10, after=True),
        reached=_posted(0), rows=[(1, False)] + [(0, False)] * 4, in_doubt=0, slack_has=1),
    "reply posted, answer not received": Crash(
        arm=_lose_second_post, reached=_posted(1),
        rows=[(1, True), (1, False)] + [(0, False)] * 3, in_doubt=1, slack_has=2),
    "root edited, answer not received": Crash(
        arm=lambda slack: slack.delay_next("chat.update", 10, after=True),
        reached=_edited(2), rows=[(1, True), (1, True), (1, False), (0, False), (0, False)],
        in_doubt=2, slack_has=3),
    # (c) Slack's answer arrived; the outbox had not marked the message sent.
    "root answered, not yet marked sent": Crash(
        hook="mark_sent:1", reached=_marker, rows=[(1, False)] + [(0, False)] * 4, in_doubt=0,
        slack_has=1),
    "reply answered, not yet marked sent": Crash(
        hook="mark_sent:2", reached=_marker, rows=[(1, True), (1, False)] + [(0, False)] * 3,
        in_doubt=1, slack_has=2),
}


@pytest.mark.parametrize("point", list(CRASHES))
def test_kill_9_at_each_point_then_restart(point, tmp_path, reference):
    crash = CRASHES[point]
    with FaultySlack() as slack:
        config = crash_config(tmp_path, slack)
        crash.arm(slack)
        proc = start_monitor(config, crash.hook)
        wait_for(lambda: crash.reached(slack, reference, tmp_path), proc, point,
                 tmp_path / "killed.log")
        kill_9(proc)
        # The store is in the state this point implies.
        rows = outbox_rows(tmp_path)
        if crash.rows is None:
            assert rows == []
        else:
            assert [k for k, _, _ in rows] == [m.key for m in reference]
            assert [(a, s) for _, a, s in rows] == crash.rows
        assert len([c for c in slack.calls if c.method in ("chat.postMessage", "chat.update")
                    and _took_effect(c)]) == crash.slack_has
        looks_before = len(slack.calls_to("conversations.history")) + len(
            slack.calls_to("conversations.replies"))

        done = restart_until_done(config)
        assert done.returncode == 0, done.stderr[-2000:]  # the incident resolved
        audit = audit_delivery(slack, reference)
        assert (audit.duplicates, audit.lost, audit.problems) == (0, 0, [])
        if crash.in_doubt is not None and reference[crash.in_doubt].action is not \
                Action.UPDATE_ROOT:
            # The restart looked before sending the message in doubt again.
            looks = len(slack.calls_to("conversations.history")) + len(
                slack.calls_to("conversations.replies"))
            assert looks > looks_before
        status = monitor(config, "status", "--format", "json")
        assert status.returncode == 0, status.stderr
        assert json.loads(status.stdout)["outbox"] == {"queued": 0, "messages": []}
        assert all(sent for _, _, sent in outbox_rows(tmp_path))


# --- 3. known gaps --------------------------------------------------------------------------------

def test_a_post_still_in_flight_when_killed_is_not_posted_twice(tmp_path, reference):
    with FaultySlack() as slack:
        slack.delay_next("chat.postMessage", 2)  # Slack applies it 2 s after it arrived
        config = crash_config(tmp_path, slack, timeout="3s")  # within the client's timeout
        proc = start_monitor(config)
        wait_for(lambda: slack.calls_to("chat.postMessage"), proc, "the root's post",
                 tmp_path / "killed.log")
        kill_9(proc)
        first = slack.calls_to("chat.postMessage")[0]
        assert restart_until_done(config).returncode == 0
        time.sleep(max(0.0, first.at + 2.5 - time.monotonic()))  # the first request lands
        audit = audit_delivery(slack, reference)
        assert audit.duplicates == 0, posted_keys(slack)


def test_a_regression_alert_waits_for_the_thread_it_links(tmp_path):
    earlier, regression = "svc:sig:20251206T123000Z", "svc:sig:20251207T130000Z"
    messages = [
        Message(f"{earlier}#1.0", earlier, Action.POST_ROOT, CHANNEL, "earlier incident"),
        Message(f"{regression}#1.0", regression, Action.POST_ROOT, CHANNEL, "its regression",
                link_thread_of=earlier),
    ]
    store = open_store(f"sqlite:///{tmp_path}/state.db")
    store.commit_cycle(State(), CycleRecord(unit="u", checkpoint=None, seen={},
                                            forget_before=None, messages=messages))
    try:
        with SlackServer() as slack:
            notifier = SlackNotifier(slack.token, base_url=slack.base_url, min_interval=0)
            clock = FakeClock()
            slack.fail_next("chat.postMessage", status=503)  # the earlier alert, once
            first = drain(store, notifier, **clock.drives)
            assert first.held == {HoldReason.NO_LINK: 1}  # the regression waits for its link
            clock.advance(60)  # past the backoff, and past the failed try's timeout
            drain(store, notifier, **clock.drives)
            assert store.queued() == [] and clock.slept == []
            roots = {r["text"]: r for r in slack.messages(CHANNEL)}
            linked = "Previous incident thread" in json.dumps(roots["its regression"]["blocks"])
            assert (list(roots), linked) == (["earlier incident", "its regression"], True)
    finally:
        store.close()
