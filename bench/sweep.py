"""The sweep: `monitor run`'s check cycle at 10, 100, 1,000 and 10,000 requests a second.

What is measured: for each rate, 10 simulated minutes of one Cloud Run service (every request's
request log plus an app line or so, and as many unrelated errors with their stack traces at every
rate, since each is a needle (a failed request) a cycle must read),
with the same live incident at every rate: a deploy whose migration renames the session table,
then 300 requests failing with `MissingSessionTableError` (a 500 and the error line with its
stack trace) over two minutes, then a fix deploy with a fix migration, and recovery. The
monitor's real cycle (`check.run_cycle`, with the config, SQLite store, Cloud Logging source
over gRPC and console notifier built as `monitor run` builds them) runs every `poll.interval`
of simulated time against the emulator, which runs in a process of its own and serves a
`SyntheticStore` (monitor/emulator/synthetic.py): the traffic is made on the fly and indexed by
what queries select, and the store's clock is the simulated now, so entries appear as time
passes. Per cycle: ListLogEntries requests (the emulator's count), entries read
(`ReadStats.entries_read`), checkpoint lag after the cycle (now - checkpoint.until), CPU seconds
of the monitor's process (`time.process_time`), and what the console notifier printed.

Why that baseline: the question is whether a busy service costs what a quiet one costs
(DESIGN.md, "What a check reads"), so each rate is compared with the slowest, 10 requests a
second, measured in the same invocation. Targets: requests and entries read per cycle at the top
rate within 2x of those at 10/s; checkpoint lag never above one interval; the incident's count
equal to the failures injected (or, if the monitor says it estimates, within its stated bound).
In full mode the same sweep also runs with `source.select: false` (every entry read, as before
issue 16), for comparison. The read budget (`max_requests_per_minute`) runs on the simulated
clock: a wait for it is counted, not slept.

    python -m bench.sweep [--quick]     # prints the section as markdown
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from bench.common import (
    ROOT,
    Options,
    Section,
    child,
    config_dict,
    median,
    percentile,
    table,
)
from bench.emulator_proc import EmulatorProcess

PROJECT = "bench-prod"
SERVICE = "storefront"
T0 = datetime(2025, 12, 1, 9, 0, tzinfo=UTC)
RATES = [10, 100, 1_000, 10_000]
QUICK_RATES = [10, 100]
SIGNAL = "missing-session-table"
FIRST = f"{SERVICE}-00001-abc"
BAD = f"{SERVICE}-00002-wex"
FIX = f"{SERVICE}-00003-mop"
BAD_MIGRATION = "20251204205052_map_session_table_to_lowercase"
FIX_MIGRATION = "20251213003742_fix_session_table_uppercase"
RATIO = 2.0


@dataclass(frozen=True)
class Plan:
    duration: float  # simulated seconds of traffic
    interval: float  # poll.interval
    failures: int  # failed requests, the same at every rate
    fail_start: float
    fail_end: float  # the fix revision is ready then
    bad_deploy: float
    startup_after: float  # a deploy's audit entry to its first start-up line
    shutdown_after: float  # the previous revision's instances stop this long after Ready
    resolve_after: float
    max_lateness: float
    wall_budget: float  # seconds of real time one rate may take before its cycles stop
    flood_base: float = 10_000  # the flood run: requests a second of the service, and
    flood_rate: float = 5_000  # failing requests a second on top, between the same times


def plan(quick: bool) -> Plan:
    if quick:
        return Plan(duration=120, interval=20, failures=60, fail_start=20, fail_end=50,
                    bad_deploy=5, startup_after=3, shutdown_after=10, resolve_after=30,
                    max_lateness=15, wall_budget=40, flood_base=100, flood_rate=500)
    return Plan(duration=600, interval=60, failures=300, fail_start=90, fail_end=210,
                bad_deploy=60, startup_after=20, shutdown_after=60, resolve_after=120,
                max_lateness=60, wall_budget=150)


def traffic(rate: float, p: Plan, flood: bool = False) -> dict[str, Any]:
    """The synthetic store's spec (JSON) for one rate: the same story at every rate; in a
    `flood`, `p.flood_rate` requests a second fail between the same times instead."""
    from monitor.emulator.synthetic import Deploy, Failures, TrafficSpec

    failures = Failures(start=p.fail_start, end=p.fail_end, per_second=p.flood_rate) if flood \
        else Failures(start=p.fail_start, end=p.fail_end, total=p.failures)
    fix_at = p.fail_end - Deploy(0, FIX, startup_after=p.startup_after).ready_offset()
    spec = TrafficSpec(
        start=T0, duration=p.duration, requests_per_second=rate, seed=16, project=PROJECT,
        service=SERVICE, revision=FIRST, app_lines_per_request=1.0,
        # the same number of unrelated errors at every rate, as of the incident's (10/s: 0.2 %):
        # each is a needle (a failed request), so a share of the traffic would be read in
        # proportion to it, which is the point of reading failed requests, not a cost to hide
        other_error_share=0.002 * RATES[0] / rate, episodes=(
            Deploy(at=p.bad_deploy, revision=BAD, migrations=(BAD_MIGRATION,),
                   startup_after=p.startup_after, shutdown_after=p.shutdown_after),
            failures,
            Deploy(at=fix_at, revision=FIX, migrations=(FIX_MIGRATION,),
                   startup_after=p.startup_after, shutdown_after=p.shutdown_after)))
    return spec.to_json()


# --- the emulator's process -----------------------------------------------------------------


def emulator_main(spec: dict[str, Any]) -> int:
    """Serve a SyntheticStore on 127.0.0.1 whose clock is set by the parent (`now ISO`);
    commands on stdin, one JSON line each: `now ISO`, `requests`, `counters`, `quit`."""
    from monitor.emulator import Emulator, SyntheticStore, TrafficSpec

    traffic_spec = TrafficSpec.from_json(spec)
    now = [traffic_spec.start]
    store = SyntheticStore(traffic_spec, clock=lambda: now[0])
    emulator = Emulator(store, rest=False).start()
    print(json.dumps({"grpc": emulator.grpc_endpoint, "rest": None, "entries": store.total(),
                      "classes": len(store._classes)}), flush=True)
    for line in sys.stdin:
        cmd = line.split()
        if not cmd:
            continue
        answer: Any = None
        if cmd[0] == "now":
            now[0] = datetime.fromisoformat(cmd[1])
            answer = 0
        elif cmd[0] == "requests":
            answer = emulator.requests
        elif cmd[0] == "counters":
            answer = {**store.counters, "cpu": time.process_time()}
        elif cmd[0] == "quit":
            break
        print(json.dumps(answer), flush=True)
    emulator.stop()
    return 0


@dataclass
class SyntheticEmulator(EmulatorProcess):
    """bench/emulator_proc.py's handle, for `python -m bench.sweep emulator`."""

    def __enter__(self) -> SyntheticEmulator:
        self.proc = subprocess.Popen([sys.executable, "-m", "bench.sweep", "emulator",
                                      json.dumps(self.spec)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, cwd=ROOT)
        self.hello = json.loads(self._readline(self.timeout))
        self.grpc = self.hello["grpc"]
        self.rest = None
        return self


# --- the monitor's process: one rate ---------------------------------------------------------


def _incident(result: Any) -> dict[str, Any] | None:
    from monitor.correlate.model import IncidentKind

    found = [i for i in result.state.incidents.values()
             if i.kind is IncidentKind.ERROR and i.signal == SIGNAL]
    if not found:
        return None
    inc = max(found, key=lambda i: i.first_seen)
    as_json = inc.to_json()
    extra = {k: v for k, v in as_json.items() if "estimat" in k or "bound" in k}
    return {"id": inc.id, "count": inc.count, "status": inc.status.value,
            "introduced_by": inc.introduced_by, "resolved_by": inc.resolved_by,
            "suspect_migrations": list(inc.suspect_migrations), "reason": inc.reason,
            "incidents": len(found), **extra}


def run_rate(args: dict[str, Any]) -> dict[str, Any]:
    """Every cycle of one rate, in this (fresh) process; the emulator in another."""
    from monitor import notify, sources
    from monitor.check import run_cycle
    from monitor.config import parse_config, unit_name
    from monitor.emulator.synthetic import TrafficSpec
    from monitor.sources.budget import RateLimiter
    from monitor.store import open_store

    p = Plan(**args["plan"])
    flood = bool(args.get("flood"))
    spec = traffic(args["rate"], p, flood)
    workdir = Path(tempfile.mkdtemp(prefix="bench-sweep-", dir=args["workdir"]))
    started = time.monotonic()
    with SyntheticEmulator({**spec}, timeout=120) as emu:
        raw = config_dict(project=PROJECT, services=[SERVICE], endpoint=emu.grpc,
                          state_url=f"sqlite:///{workdir}/state.db",
                          interval=f"{p.interval:g}s", max_lateness=f"{p.max_lateness:g}s",
                          resolve_after=f"{p.resolve_after:g}s")
        if args.get("select") is not None:
            raw["source"]["select"] = bool(args["select"])
        config = parse_config(raw, env={})
        unit = config.units[0]
        name = unit_name(unit)
        # The read budget on the simulated clock: a wait is counted, never slept.
        sim = {"seconds": 0.0, "waited": 0.0}

        def sleep(seconds: float) -> None:
            sim["waited"] += seconds

        limiter = RateLimiter(config.source.max_requests_per_minute,
                              clock=lambda: sim["seconds"] + sim["waited"], sleep=sleep)
        source = sources.build(config, unit, limiter)
        store = open_store(config.state.url)
        out = io.StringIO()
        notifier = notify.build(config, out, timeout=5)
        cycles: list[dict[str, Any]] = []
        messages: list[dict[str, Any]] = []
        incident: dict[str, Any] | None = None
        stopped = False
        for k in range(int(p.duration // p.interval) + 1):
            if time.monotonic() - started > p.wall_budget:
                stopped = True
                break
            offset = k * p.interval
            now = T0 + timedelta(seconds=offset)
            sim["seconds"] = offset
            emu.ask(f"now {now.isoformat()}")
            requests0, counters0 = emu.requests, emu.ask("counters")
            waited0, printed = sim["waited"], len(out.getvalue())
            cpu0, wall0 = time.process_time(), time.perf_counter()
            result = run_cycle(config, store, source, notifier, unit=name,
                               services=unit.services, project=unit.project, now=now,
                               default_lookback=config.poll.first_lookback)
            cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
            counters = emu.ask("counters")
            checkpoint = store.checkpoint(name)
            stats = result.stats
            cycles.append({
                "t": offset, "requests": emu.requests - requests0,
                "api_requests": stats.api_requests,
                "follow_up": getattr(stats, "follow_up_requests", 0),
                "probe": getattr(stats, "probe_requests", 0),
                "entries": stats.entries_read, "cut": stats.cut_at is not None,
                "sampled": dict(stats.sampled),
                "lag": (now - checkpoint.until).total_seconds() if checkpoint else None,
                "cpu": cpu, "wall": wall, "budget_wait": sim["waited"] - waited0,
                "built": counters["built"] - counters0["built"],
                "emulator_cpu": counters["cpu"] - counters0["cpu"], "error": result.error,
                "events": [f"{t.kind.value} {t.incident.signal} ({t.incident.count})"
                           for t in result.transitions]})
            lines = out.getvalue()[printed:].splitlines()
            for n, line in enumerate(lines):
                if line.startswith("--- "):
                    text = lines[n + 1] if n + 1 < len(lines) else ""
                    messages.append({"t": offset, "header": line[4:], "text": text[:160]})
            incident = _incident(result) or incident
        store.close()
        hello = emu.hello
    return {"rate": args["rate"], "select": args.get("select"), "cycles": cycles,
            "messages": messages, "incident": incident, "entries": hello["entries"],
            "classes": hello["classes"], "failures": TrafficSpec.from_json(spec).failures,
            "flood": flood, "stopped_early": stopped,
            "seconds": time.monotonic() - started}


# --- the report ------------------------------------------------------------------------------


def _stat(cycles: list[dict[str, Any]], key: str) -> tuple[float, float]:
    values = [float(c[key]) for c in cycles if c.get(key) is not None]
    return (median(values), max(values)) if values else (float("nan"), float("nan"))


def _fmt(value: float, digits: int = 0) -> str:
    if value != value:  # NaN
        return "n/a"
    return f"{value:,.{digits}f}"


def _pair(cycles: list[dict[str, Any]], key: str, digits: int = 0, unit: str = "") -> str:
    med, top = _stat(cycles, key)
    return f"{_fmt(med, digits)}{unit} ({_fmt(top, digits)}{unit})"


def _when(runs: dict[str, Any], kind: str) -> str:
    for c in runs["cycles"]:
        if any(e.startswith(kind) and SIGNAL in e for e in c["events"]):
            return f"{c['t']:g} s"
    return "never"


def _count_ok(run: dict[str, Any]) -> tuple[str, bool]:
    """The incident's count against the failures injected: exact, or within a stated bound."""
    inc = run["incident"]
    if inc is None:
        return "no incident", False
    count, injected = int(inc["count"]), int(run["failures"])
    bound = next((v for k, v in inc.items() if "bound" in k and isinstance(v, int | float)),
                 None)
    estimated = any(bool(v) for k, v in inc.items() if "estimat" in k)
    if estimated and bound is not None:
        return (f"{count:,} ~ {injected:,} (estimate, bound +-{bound:g})",
                abs(count - injected) <= bound)
    return f"{count:,} / {injected:,}", count == injected


def _ratio(value: float, base: float) -> float:
    return value / max(base, 1.0)


def _rows(runs: list[dict[str, Any]], p: Plan) -> list[list[str]]:
    rows = []
    for run in runs:
        cyc = run["cycles"]
        count, _ = _count_ok(run)
        rows.append([
            f"{run['rate']:,}", f"{run['entries']:,}", f"{len(cyc)}"
            + (" (stopped: wall budget)" if run["stopped_early"] else ""),
            _pair(cyc, "requests"), _pair(cyc, "entries"), _pair(cyc, "lag", 0, " s"),
            _pair(cyc, "cpu", 3, " s"), _pair(cyc, "built"), count,
            _when(run, "opened"), _when(run, "resolved")])
    return rows


HEADER = ["requests/s", "entries synthesised", "cycles", "requests/cycle: median (max)",
          "entries read/cycle: median (max)", "checkpoint lag: median (max)",
          "CPU s/cycle: median (max)", "entries the emulator built/cycle: median (max)",
          "incident count / failures injected", "opened at", "resolved at"]


def measure(opts: Options, progress: Any = print) -> Section:
    p = plan(opts.quick)
    rates = QUICK_RATES if opts.quick else RATES
    modes: list[bool | None] = [None] if opts.quick else [None, False]
    section = Section("Sweep: 10 to 10,000 requests a second under `monitor run`"
                      if not opts.quick else
                      "Sweep: 10 and 100 requests a second under `monitor run` (--quick)")
    runs: dict[bool | None, list[dict[str, Any]]] = {}
    for select in modes:
        for rate in rates:
            label = "" if select is None else " (select: false)"
            progress(f"  sweep: {rate:,} requests/s{label}, {p.duration:g} simulated s ...")
            run = child("sweep", {"mode": "rate", "rate": rate, "plan": asdict(p),
                                  "select": select, "workdir": str(opts.workdir)},
                        timeout=p.wall_budget + 120)
            cyc = run["cycles"]
            progress(f"  sweep: {rate:,}/s{label}: {len(cyc)} cycles in {run['seconds']:.0f}s, "
                     f"requests/cycle max {max((c['requests'] for c in cyc), default=0)}, "
                     f"entries/cycle max {max((c['entries'] for c in cyc), default=0):,}, "
                     f"lag max {max((c['lag'] or 0 for c in cyc), default=0):.0f}s, "
                     f"incident {_count_ok(run)[0]}")
            runs.setdefault(select, []).append(run)
    main, top = runs[None], runs[None][-1]
    base = main[0]
    section.intro = (
        f"`check.run_cycle` as `monitor run` calls it (config, SQLite store, Cloud Logging "
        f"source over gRPC, console notifier), every `poll.interval: {p.interval:g}s` of "
        f"simulated time for {p.duration / 60:g} simulated minutes, against the emulator in "
        "its own process serving a `SyntheticStore` (traffic made on the fly, indexed by what "
        "queries select; its clock is the simulated now). At each rate: one service, every "
        "request's request log plus one app line, unrelated errors (a 500 and the error "
        f"with its stack trace) as many at every rate as 0.2 % of the requests at {RATES[0]}/s "
        "(each is a needle: a share of the traffic would be read in proportion), 0.5 % of "
        "entries received up to 30 s late; a deploy at "
        f"{p.bad_deploy:g} s whose migration renames the session table, then {p.failures} "
        f"requests failing with `MissingSessionTableError` between {p.fail_start:g} s and "
        f"{p.fail_end:g} s (a 500, the error line and its 5-line stack trace, on top of the "
        "rate), the fix revision ready at "
        f"{p.fail_end:g} s; `resolve_after: {p.resolve_after:g}s`, `max_lateness: "
        f"{p.max_lateness:g}s`, `max_pages_per_cycle: 20`, `max_requests_per_minute: 30` (on "
        "the simulated clock). Figures are per cycle, median (max) over the run's cycles; "
        "requests are the emulator's ListLogEntries count, entries read "
        "`ReadStats.entries_read`, lag `now - checkpoint.until` after the cycle, CPU the "
        "monitor process's `time.process_time`. Baseline: the same run at "
        f"{base['rate']:,} requests/s.")
    section.tables.append(table(HEADER, _rows(main, p)))
    rows = []
    for run in main:
        for c in run["cycles"]:
            calls = f"{c['requests']}"
            if c["probe"] or c["follow_up"]:
                calls += f" ({c['follow_up']} follow-up, {c['probe']} probe)"
            rows.append([f"{run['rate']:,}", f"{c['t']:g} s", calls, f"{c['entries']:,}",
                         "yes" if c["cut"] else "no",
                         "n/a" if c["lag"] is None else f"{c['lag']:g} s", f"{c['cpu']:.3f} s",
                         f"{c['budget_wait']:.0f} s", "; ".join(c["events"]) or "-"])
    section.tables.append(
        "Every cycle (simulated time; `cut`: the page budget ran out, the rest of the window "
        "waits for the next cycle; `budget wait`: simulated seconds the read budget held "
        "requests back):\n\n" + table(
            ["requests/s", "at", "requests", "entries read", "cut", "lag", "CPU",
             "budget wait", "transitions"], rows))
    alerts = [[f"{run['rate']:,}", f"{m['t']:g} s", f"`{m['header']}`",
               m["text"].replace("|", "\\|") or "-"]
              for run in main for m in run["messages"]]
    if not alerts:
        alerts = [[f"{run['rate']:,}", "-", "nothing printed", "-"] for run in main]
    section.tables.append("What the console notifier printed (each message's header and first "
                          "line):\n\n" + table(["requests/s", "cycle at", "message", "text"],
                                               alerts))
    if False in runs:
        section.tables.append(
            "For comparison, `source.select: false` (every entry read, as before issue 16), "
            "the same runs:\n\n" + table(HEADER, _rows(runs[False], p)))
    # targets
    for key, what in (("requests", "requests per cycle"), ("entries", "entries read per cycle")):
        med0, max0 = _stat(base["cycles"], key)
        med1, max1 = _stat(top["cycles"], key)
        r_med, r_max = _ratio(med1, med0), _ratio(max1, max0)
        section.targets.append((
            f"{what} at {top['rate']:,}/s within {RATIO:g}x of {base['rate']:,}/s (median; max)",
            f"{r_med:.2f}x; {r_max:.2f}x ({_fmt(med1)} vs {_fmt(med0)}; {_fmt(max1)} vs "
            f"{_fmt(max0)})", r_med <= RATIO and r_max <= RATIO))
    lags = [(c["lag"], run["rate"]) for run in main for c in run["cycles"]
            if c["lag"] is not None]
    worst, at_rate = max(lags) if lags else (float("nan"), 0)
    section.targets.append((f"checkpoint lag never above one interval ({p.interval:g} s)",
                            f"max {worst:,.0f} s (at {at_rate:,}/s)",
                            bool(lags) and worst <= p.interval))
    for run in main:
        figure, ok = _count_ok(run)
        section.targets.append((f"incident count exact at {run['rate']:,}/s", figure, ok))
    section.notes.append(
        "Reading it: a busy service costs what a quiet one costs only if a cycle reads the "
        "needles (signal matches, migration output, audit and system events, failed requests) "
        "and asks for the evidence of health in a bounded probe; a cycle that reads every entry "
        "reads the page budget (20 pages of 1,000) and falls behind at the higher rates: its "
        "checkpoint stays where it was while the rest of the window waits (lag grows by an "
        "interval each cycle) and it may never reach the incident within the run. The "
        "emulator's own cost is not in the CPU column (its own process); "
        "`entries the emulator built` shows that it built only what the filters could select.")
    flood = child("sweep", {"mode": "rate", "rate": p.flood_base, "plan": asdict(p),
                            "flood": True, "workdir": str(opts.workdir)},
                  timeout=p.wall_budget + 120)
    progress(f"  sweep: flood of {p.flood_rate:,.0f} failing/s on {p.flood_base:,.0f}/s: "
             f"{len(flood['cycles'])} cycles in {flood['seconds']:.0f}s, incident "
             f"{_count_ok(flood)[0]}")
    _flood_section(section, flood, p, full=not opts.quick)
    stopped = [f"{r['rate']:,}/s" for mode in [*runs.values(), [flood]] for r in mode
               if r["stopped_early"]]
    if stopped:
        section.notes.append(f"Stopped early at {', '.join(stopped)}: the run used up its wall "
                             f"budget of {p.wall_budget:g} s before its last cycle.")
    section.data["sweep"] = {str(k): v for k, v in runs.items()}
    section.data["sweep_plan"] = asdict(p)
    return section


def _flood_section(section: Section, run: dict[str, Any], p: Plan, full: bool) -> None:
    """The flood: the same story, but `flood_rate` requests a second fail (issue 16, item 3)."""
    cyc = run["cycles"]
    section.tables.append(
        f"A flood: the same story at {p.flood_base:,.0f} requests/s, but {p.flood_rate:,.0f} "
        f"requests a second fail between {p.fail_start:g} s and {p.fail_end:g} s "
        f"({run['failures']:,} failures: each a 500 and its error line, {2 * run['failures']:,} "
        "needles, against a read budget of 20,000 entries a check). `sampled`: the weight w of "
        "each class the check read one in w of (monitor/sampling.py); `wall`: the cycle's real "
        "time, the emulator's answers (its own process) included:\n\n" + table(
            ["at", "requests", "entries read", "sampled", "cut", "lag", "CPU", "wall",
             "transitions"],
            [[f"{c['t']:g} s", f"{c['requests']}", f"{c['entries']:,}",
              ", ".join(f"{k}: 1/{w}" for k, w in sorted(c["sampled"].items())) or "-",
              "yes" if c["cut"] else "no", "n/a" if c["lag"] is None else f"{c['lag']:g} s",
              f"{c['cpu']:.3f} s", f"{c['wall']:.2f} s", "; ".join(c["events"]) or "-"]
             for c in cyc]))
    figure, ok = _count_ok(run)
    section.targets.append((f"flood of {p.flood_rate:,.0f}/s: count an estimate within its "
                            "stated bound", figure, ok))
    lags = [c["lag"] for c in cyc if c["lag"] is not None]
    top = max(lags) if lags else float("nan")
    section.targets.append((f"flood: checkpoint lag never above one interval ({p.interval:g} s)",
                            f"max {top:,.0f} s", bool(lags) and top <= p.interval))
    flooded = [c for c in cyc if p.fail_start <= c["t"] <= p.fail_end + p.interval]
    budget = max((c["requests"] - c["follow_up"] - c["probe"] for c in cyc), default=0)
    section.targets.append(("flood: main-query requests per check within the page budget (20)",
                            f"max {budget}", budget <= 20))
    opened = next((c for c in cyc if any(e.startswith("opened") and SIGNAL in e
                                         for e in c["events"])), None)
    if opened is None:
        section.targets.append(("flood: alert in the first check after it starts", "never",
                                False))
        return
    wait = opened["t"] - p.fail_start
    latency = wait + opened["wall"]
    walls = [c["wall"] for c in flooded]
    section.targets.append((
        "flood: alert latency (the first failure to the end of the check that posts it)",
        f"{latency:.1f} s (wait for the check {wait:g} s + the check {opened['wall']:.2f} s)",
        wait <= p.interval))
    if full:  # a quick run on a loaded machine says nothing of seconds
        # The emulator answers in Python, hashing every insert id a sample passes over (1.2
        # million a check here): its time stands in for Cloud Logging's and is not the
        # monitor's. The monitor's own is the wall time less the emulator's CPU answering it
        # (requests are sent one at a time, so the two do not overlap but for the prefetch).
        own = percentile([c["wall"] - c["emulator_cpu"] for c in flooded], 99)
        p99 = percentile(walls, 99)
        section.targets.append((
            f"flood: p99 alert latency under interval + 3 s (a check during the flood, p99 of "
            f"{len(walls)}: the monitor's own time)",
            f"interval + {own:.2f} s (+ {p99 - own:.2f} s of the emulator's answers)",
            own < 3.0))


def main(argv: list[str]) -> int:
    if argv[:1] == ["child"]:
        args = json.loads(argv[1])
        print(json.dumps(run_rate(args)))
        return 0
    if argv[:1] == ["emulator"]:
        return emulator_main(json.loads(argv[1]))
    quick = "--quick" in argv
    workdir = Path(tempfile.mkdtemp(prefix="monitor-sweep-"))
    try:
        section = measure(Options(quick=quick, runs=1, workdir=workdir),
                          lambda m: print(m, file=sys.stderr, flush=True))
    finally:
        import shutil

        shutil.rmtree(workdir, ignore_errors=True)
    print(section.markdown())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
