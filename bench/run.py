"""`python -m bench.run [--quick] [--out BENCHMARKS.md]`: every benchmark, one report.

Runs, in this order, against the project's own local Cloud Logging emulator (`monitor.emulator`,
in a child process wherever the monitor's own time or memory is measured) and the local Slack
server (`tests.slack_server.SlackServer`), all on 127.0.0.1 and bounded in time:
throughput (bench/throughput.py), memory of a cycle (bench/memory.py), API cost
(bench/api_cost.py), memory of `monitor run` (bench/memory.py), detection latency
(bench/latency.py) and cost of state (bench/state_cost.py). Traffic comes from
bench/traffic.py, seeded, so every run reads the same entries.

Every figure is a median of N runs made in this invocation (N=5; 1 with --quick, which also uses
small sizes so the test suite can run it in about a minute), with its baseline, measured in the
same invocation, and the ratio beside it. The machine is shared and noisy: compare ratios, not
absolute times. A benchmark that fails is reported as such and the command exits 1.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path

from bench import api_cost, latency, memory, state_cost, throughput
from bench.common import ROOT, Options, Section, machine, table
from bench.emulator_proc import EmulatorProcess

PROJECT = throughput.PROJECT
SERVICES = throughput.SERVICES


def _progress(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _guard(title: str, run: Callable[[], Section]) -> Section:
    """A failing benchmark becomes a section that says so; the others still run."""
    started = time.monotonic()
    _progress(f"{title} ...")
    try:
        section = run()
    except Exception:
        section = Section(title)
        section.data["failed"] = True
        section.notes.append(f"**FAILED**:\n\n```\n{traceback.format_exc()[-4000:]}\n```")
        section.targets.append((title, "failed", False))
    section.data["seconds"] = time.monotonic() - started
    _progress(f"{title}: done in {section.data['seconds']:.0f}s")
    return section


def run(opts: Options) -> list[Section]:
    sections: list[Section] = []
    big = 30_000 if opts.quick else 1_000_000
    sizes = [10_000] if opts.quick else [100_000, 1_000_000]
    spec = {"datasets": [{"seed": 7, "project": PROJECT, "services": SERVICES,
                          "entries": big}]}
    emu_started = time.monotonic()
    _progress(f"loading {big:,} generated entries into the emulator (a child process) ...")
    try:
        with EmulatorProcess(spec) as emu:
            load = time.monotonic() - emu_started
            _progress(f"emulator ready: {emu.hello['entries']:,} entries in {load:.0f}s")
            tp = _guard("Throughput", lambda: throughput.measure(opts, emu, sizes, _progress))
            tp.notes.insert(0, f"The emulator loaded the {emu.hello['entries']:,} generated "
                               f"entries in {load:.0f} s (in its own process: about 10,000 "
                               "entries/s, the cost of converting each to protobuf once).")
            sections.append(tp)
            unbounded = tp.data.get("results", {})
            sections.append(_guard("Memory of a cycle", lambda: memory.measure_cycles(
                opts, emu, [10_000, big], unbounded, _progress)))
    except Exception:
        failed = Section("Throughput")
        failed.notes.append(f"**FAILED** (emulator):\n\n```\n{traceback.format_exc()[-4000:]}"
                            "\n```")
        failed.targets.append(("emulator with the backlog", "failed", False))
        sections.append(failed)
    sections.append(_guard("API cost", lambda: api_cost.measure(opts, _progress)))
    sections.append(_guard("Memory of monitor run", lambda: memory.measure_run(
        opts, 50 if opts.quick else 1000, _progress)))
    sections.append(_guard("Detection latency", lambda: latency.measure(opts, _progress)))
    sections.append(_guard("Cost of state", lambda: state_cost.measure(opts, _progress)))
    return sections


def findings(sections: list[Section]) -> list[str]:
    """What holds each missed target back, from the profiles and figures above."""
    out: list[str] = []

    def having(key: str) -> Section | None:
        return next((s for s in sections if key in s.data), None)

    tp = having("profile")
    if tp is not None and "profile" in tp.data:
        buckets: dict[str, float] = tp.data["profile"]["buckets"]
        total = buckets.get("total") or 1.0
        ranked = sorted(((v, k) for k, v in buckets.items() if k != "total"), reverse=True)
        worst = ", ".join(f"{k.split(' (')[0]} {100 * v / total:.0f} %" for v, k in ranked[:4])
        missed = [t for t in tp.targets if t[2] is False]
        transport = next((v for k, v in buckets.items() if k.startswith("read: the gRPC")), 0.0)
        own = total - transport
        out.append(
            "**Throughput** "
            + ("misses the 1.3x target" if missed else "meets the 1.3x target")
            + f". In the profiled cycle the biggest steps are: {worst}. The gRPC call is the "
            f"work the floor does too; the other {100 * own / total:.0f} % is the cycle's own "
            "work per entry, in pure Python. `sources/cloud_logging.py:_from_pb` builds each "
            "`LogEntry` through the general keyword-argument `entries.normalise`, makes two "
            "`datetime`s per entry (`_pb_time`: epoch + timedelta), converts every structured "
            "payload whole with `MessageToDict` (JSON app logs, audit entries) and works out "
            "the project per entry; `Classifier.classify` sorts every entry and dispatches "
            "each one; `commit_cycle` formats (`strftime`) and inserts a dedupe key per entry "
            "inside the forget window. Fixes, in order of gain: (1) a fast path in `_from_pb` "
            "that fills `LogEntry` directly from the protobuf fields, converts timestamps with "
            "`datetime.fromtimestamp(seconds, UTC)` plus `replace(microsecond=nanos // 1000)` "
            "(or keeps integer nanoseconds until they are needed), and reads only "
            "`message`/`error` from a JSON payload's Struct instead of `MessageToDict`; "
            "(2) request logs (half of the traffic) folded without a full `LogEntry`: only "
            "their time, service, revision and status are used; (3) `classify` skips the sort "
            "when the source already reads in timestamp order (the API does); (4) dedupe keys "
            "stored with a cheap time format (`isoformat`, or integer nanoseconds). Reaching "
            "1.3x needs the per-entry work to drop to about a third of the transport's time, "
            "so (1) and (2) are both needed.")
    mem = having("peaks")
    if mem is not None:
        out.append(
            "**Memory of a cycle**: the shipped budget (`max_pages_per_cycle: 20`) is what keeps "
            "a cycle's memory flat: a 1,000,000-entry backlog is read 20,000 entries per cycle. "
            "Within one cycle nothing is streamed: `check.fresh_entries` materialises every "
            "entry read (a list and a dict of `LogEntry`), `classify` sorts them all and the "
            "commit builds every dedupe key, so without the budget the peak grows with the "
            "backlog (second table). A budget of N pages costs roughly N x 1,000 `LogEntry` "
            "values of memory.")
    run_mem = having("slope")
    if run_mem is not None:
        d = run_mem.data
        grew = d["end"] > memory.GROWTH_TARGET * d["warm"]
        out.append(
            f"**Memory of `monitor run`**: {d['cycles']:.0f} cycles, RSS "
            f"{d['warm'] / 1024:.1f} MB after warm-up and {d['end'] / 1024:.1f} MB at the end "
            f"(slope {d['slope']:+.0f} kB per 1,000 cycles). "
            + ("It grows: every cycle loads the whole state from the store, so memory follows "
               "the state's size (incidents and revisions are never deleted: see Cost of "
               "state), plus SQLite's page cache filling up to its limit."
               if grew else "No growth beyond the allocator's noise after warm-up."))
    lat = having("split")
    if lat is not None:
        missed = [t for t in lat.targets if t[2] is False]
        out.append(
            "**Detection latency**: "
            + ("every target met" if not missed else "the p99 target is missed")
            + ". An entry waits for the next poll (0..interval), then the cycle reads, commits "
            "and delivers. Delivery runs inside the cycle (`check.run_cycle` step 6, "
            "`notify/outbox.py:drain`) and is paced at one message per second per channel: a "
            "resolution is two messages (the broadcast reply and the root edit), so when "
            "several incidents change in one cycle, later messages wait, and the next cycle "
            "cannot start until the drain ends. Fix: drain the outbox in its own thread (the "
            "scheduler's cycle only commits), and send root posts and broadcast replies before "
            "`chat.update` edits of older roots, so an alert never queues behind an edit.")
    state = having("probes")
    if state is not None:
        parts = []
        for name, probes in state.data["probes"].items():
            days = sorted(probes)
            first, last = probes[days[0]], probes[days[-1]]
            parts.append(f"on {name} the store is {last['size'] / 1024:,.0f} KB after "
                         f"{days[-1]} days ({last['size'] / first['size']:.1f}x day {days[0]}) "
                         f"and the probe cycle takes {last['seconds'] / first['seconds']:.1f}x "
                         f"as long as on day {days[0]}")
        bounded = all(t[2] for t in state.targets if "bounded" in t[0])
        flat = all(t[2] for t in state.targets if "flat" in t[0])
        text = "**Cost of state**: " + "; ".join(parts) + "."
        if bounded:
            text += " The stores stay bounded: retention deletes what is no longer needed."
        else:
            text += (" The stores grow with the history: besides the dedupe keys (deleted after "
                     "`2 x max_lateness`), what the cycle keeps (incidents, revision facts, "
                     "sent outbox rows) is not deleted within these days.")
        for name, shares in (state.data.get("shares") or {}).items():
            total = shares.get("total") or 0.0
            if not total:
                continue
            named = sorted(((v, k) for k, v in shares.items() if k != "total"), reverse=True)
            text += (f" On {name}, the last day's probe spends " + ", ".join(
                f"{100 * v / total:.0f} % in {k.split(' (')[0]}" for v, k in named) + ".")
        pg = state.data["probes"].get("PostgreSQL")
        if pg:
            last = pg[max(pg)]
            live_rows = last["rows"]["incidents"] + last["rows"]["revisions"]
            text += (
                f" PostgreSQL's size counts dead row versions: the cycles' UPDATEs left "
                f"{last['rows']['dead']:,} of them beside {live_rows:,} live incidents and "
                f"revisions by day {max(pg)}, with {last['rows']['vacuums']} vacuum(s) (this "
                f"server runs with `autovacuum = {state.data.get('autovacuum')}`; with "
                "autovacuum on they are reclaimed about once a minute, but every rewritten row "
                "still costs a new version).")
        fixes = []
        sqlite = (state.data.get("shares") or {}).get("SQLite") or {}
        total = sqlite.get("total") or 0.0

        def share(prefix: str) -> float:
            return next((v / total for k, v in sqlite.items() if k.startswith(prefix)), 0.0) \
                if total else 0.0

        if share("`correlate/health.py") > 0.1:
            fixes.append("`correlate/health.py:source_health` should not copy the state when "
                         "the read was fine and no source incident is open")
        if share("`correlate/incidents.py") > 0.2:
            fixes.append("`correlate/incidents.py:advance` should copy only the incidents and "
                         "revisions it changes (copy-on-write), not the whole `State`, and "
                         "`_Machine.emit` not deep-copy every revision of the service per "
                         "transition")
        if share("`commit_cycle`") > 0.15:
            fixes.append("`commit_cycle` should write only the rows the cycle changed")
        if share("`load_state`") > 0.1:
            fixes.append("`load_state` should load only open incidents and recent revisions "
                         "instead of the whole history every cycle")
        if not bounded:
            fixes.append("retention (resolved incidents, revisions not seen and sent outbox "
                         "rows older than a configurable age) should bound the store")
        if fixes and not flat:
            text += " What would fix it, in order of the profile's shares: " + "; ".join(
                f"({n}) {f}" for n, f in enumerate(fixes, 1)) + "."
        out.append(text)
    return out


def revision() -> str:
    """The code measured: $MONITOR_BENCH_REVISION, else git's HEAD (and whether monitor/ has
    uncommitted changes)."""
    given = os.environ.get("MONITOR_BENCH_REVISION")
    if given:
        return given

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True,
                              timeout=10).stdout.strip()

    try:
        head = git("rev-parse", "--short", "HEAD")
        dirty = git("status", "--porcelain", "--", "monitor")
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    if not head:
        return "unknown"
    return f"commit {head}" + (" with uncommitted changes under monitor/" if dirty else "")


def report(sections: list[Section], opts: Options, argv: list[str], elapsed: float) -> str:
    m = machine()
    command = shlex.join(["python", "-m", "bench.run", *argv])
    lines = [
        "# Benchmarks",
        "",
        f"Generated by `{command}` (interpreter `{sys.executable}`) on {m['date']}, in "
        f"{elapsed / 60:.1f} minutes, measuring {revision()}. Do not edit by hand: run the "
        "command again.",
        "",
        table(["machine", ""], [["cores (os.cpu_count)", m["cores"]],
                                 ["memory (/proc/meminfo)", m["memory"]],
                                 ["Python", m["python"]], ["platform", m["platform"]]]),
        "",
        ("Mode: **--quick** (small sizes, one run per figure): a smoke test, not a measurement."
         if opts.quick else
         f"Mode: full. Every figure is the median of {opts.runs} runs made in this invocation, "
         "beside its baseline measured in the same invocation; the machine is shared and "
         "noisy, so read the ratios rather than the absolute times."),
        "",
        "## Targets",
        "",
    ]
    rows = []
    for s in sections:
        for what, figure, met in s.targets:
            verdict = "n/a" if met is None else ("**met**" if met else "**missed**")
            rows.append([s.title.split(":")[0], what, figure, verdict])
    lines += [table(["benchmark", "target", "measured", "verdict"], rows), ""]
    notes = findings(sections)
    if notes:
        lines += ["## What holds the missed targets back", ""]
        for note in notes:
            lines += [note, ""]
    for s in sections:
        lines += [s.markdown(), ""]
    return "\n".join(lines).rstrip() + "\n"


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split(
        "\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="small sizes, one run per figure (about a minute)")
    parser.add_argument("--out", default=str(ROOT / "BENCHMARKS.md"),
                        help="the report to (re)write (default: BENCHMARKS.md at the root)")
    args = parser.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="monitor-bench-"))
    opts = Options(quick=args.quick, runs=1 if args.quick else 5, workdir=workdir)
    started = time.monotonic()
    try:
        sections = run(opts)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    elapsed = time.monotonic() - started
    text = report(sections, opts, argv, elapsed)
    Path(args.out).write_text(text)
    _progress(f"wrote {args.out} in {elapsed:.0f}s")
    failed = [s.title for s in sections if s.data.get("failed") or any(
        t[1] == "failed" for t in s.targets)]
    if failed:
        _progress(f"failed: {', '.join(failed)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
