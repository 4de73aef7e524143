"""`python -m bench.run [--quick] [--out BENCHMARKS.md]`: every benchmark, one report.

Runs, in this order, against the project's own local Cloud Logging emulator (`monitor.emulator`,
in a child process wherever the monitor's own time or memory is measured) and the local Slack
server (`tests.slack_server.SlackServer`), all on 127.0.0.1 and bounded in time:
throughput (bench/throughput.py), memory of a cycle and of a replay (bench/memory.py), API cost
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

from bench import api_cost, latency, memory, state_cost, sweep, throughput
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
    sections.append(_guard("Memory of a replay", lambda: memory.measure_replay(
        opts, [2_000, 20_000] if opts.quick else [10_000, 1_000_000], _progress)))
    sections.append(_guard("API cost", lambda: api_cost.measure(opts, _progress)))
    sections.append(_guard("Sweep", lambda: sweep.measure(opts, _progress)))
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
        measured = ", ".join(f"{t[1]} ({t[0].split(' at ')[-1]})" for t in tp.targets)
        out.append(
            "**Throughput** "
            + ("misses the 1.3x target" if missed else "meets the 1.3x target")
            + f": {measured}. The read overlaps the server already (the next page is fetched "
            "on a helper thread while this one is converted and consumed), so what the cycle "
            "adds to the floor is its own Python work per entry beyond the wait for the next "
            f"page. In the profiled cycle the biggest steps are: {worst}. Done so far: "
            "protobuf fields straight into `LogEntry` (`sources/cloud_logging.py:_from_pb`), "
            "what a log name and monitored resource say worked out once per distinct pair, "
            "the whole second of each timestamp cached, only the message fields read from a "
            "JSON payload's Struct, no sort of a batch already in order, `isoformat` dedupe "
            "keys, no receive time per entry (no step read it), a signal pre-check through an "
            "RE2 set (no match object per line), and classify and correlate page by page while "
            "the next page is fetched (`check.fresh_pages`), a `LogEntry` filled without a "
            "frozen dataclass's `object.__setattr__` per field (`entries.new_entry`), the JSON "
            "payload's text fields looked up by their first key once. What is left, with its "
            "fix, in order of gain: (1) a `datetime` per entry: keep times as integer "
            "nanoseconds until a step needs a `datetime`; (2) request logs, about half of "
            "this backlog, each become a `LogEntry`, a `RequestServed` observation and a dedupe "
            "key only to be counted per revision and status: count them straight from the "
            "protobuf. This benchmark reads everything (`source.select: false`); the default "
            "read of the needles reads no successful request log at all (see the sweep), so "
            "there the per-entry cost applies to a small fraction of the traffic. The cycle "
            "reaches the floor when its own work per page is less than the server's time per "
            "page.")
    mem = having("peaks")
    if mem is not None:
        out.append(
            "**Memory of a cycle**: the shipped budget (`max_pages_per_cycle: 20`) is what keeps "
            "a cycle's memory flat: a 1,000,000-entry backlog is read 20,000 entries per cycle. "
            "Within one cycle, entries are folded a page at a time (`check.fresh_pages`); what "
            "still grows with the read is one dedupe key per entry (the read's own key set and "
            "the commit's rows), so without the budget the peak grows with the backlog, more "
            "slowly (second table).")
    replay_mem = having("replay_peaks")
    if replay_mem is not None:
        peaks = replay_mem.data["replay_peaks"]
        small, big = min(peaks), max(peaks)
        out.append(
            f"**Memory of a replay**: {big:,} entries peak at {peaks[big] / peaks[small]:.2f}x "
            f"the {small:,}-entry replay. `check.fresh_pages` folds an export a page of 1,000 "
            "entries at a time in event order (`sources/replay.py` sorts and deduplicates it in "
            "a temporary SQLite file beyond the first page), so what still grows is what the "
            "commit must write: the dedupe keys of the last 2 x `poll.max_lateness` of entries "
            "(every entry of a small export; about 37,000 of a big one at this traffic); "
            "the SQLite store hands them to `executemany` as a generator.")
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
        out.append(_state_finding(state))
    return out


def _state_finding(state: Section) -> str:
    """Cost of state, from the probes' sizes, rows and profiles."""
    text = "**Cost of state**: "
    parts = []
    for name, probes in state.data["probes"].items():
        days = sorted(probes)
        first, prev, last = probes[days[0]], probes[days[-2]], probes[days[-1]]
        r0, r1 = prev["rows"], last["rows"]
        kept0, kept1 = r0["incidents"] + r0["revisions"], r1["incidents"] + r1["revisions"]
        part = (f"on {name}, {last['size'] / 1024:,.0f} KB after {days[-1]} days "
                f"({last['size'] / first['size']:.1f}x day {days[0]}, "
                f"{last['size'] / prev['size']:.2f}x day {days[-2]}), the probe cycle "
                f"{last['seconds'] / first['seconds']:.1f}x day {days[0]} and "
                f"{last['seconds'] / prev['seconds']:.2f}x day {days[-2]}; incidents + "
                f"revisions {kept0:,} -> {kept1:,} ("
                + ("bounded" if kept1 <= 1.1 * kept0 else "growing")
                + f"), sent outbox rows {r0['outbox']:,} -> {r1['outbox']:,}")
        if "dead" in r1:
            by_table = sorted(((n, k.split(":", 1)[1]) for k, n in r1.items()
                               if k.startswith("dead:") and n), reverse=True)
            part += (f", dead row versions {r0['dead']:,} -> {r1['dead']:,} ("
                     + ", ".join(f"{t} {n:,}" for n, t in by_table[:4])
                     + f"; {r1['vacuums']} vacuum(s) so far: a plain `VACUUM` once per "
                     "simulated day, standing in for autovacuum, which is `"
                     f"{state.data.get('autovacuum')}` on this server and on in Cloud SQL)")
        parts.append(part)
    text += "; ".join(parts) + "."
    text += (" Sent messages go with their incident when retention deletes it (and any sent "
             "message after 30 days of real time), so the outbox follows the incidents.")
    for name, shares in (state.data.get("shares") or {}).items():
        total = shares.get("total") or 0.0
        if total:
            named = sorted(((v, k) for k, v in shares.items() if k != "total"), reverse=True)
            text += (f" On {name}, the last probe spends " + ", ".join(
                f"{100 * v / total:.0f} % in {k.split(' (')[0]}" for v, k in named[:3]) + ".")
    sqlite = (state.data.get("shares") or {}).get("SQLite") or {}
    total = sqlite.get("total") or 0.0

    def share(prefix: str) -> float:
        return next((v / total for k, v in sqlite.items() if k.startswith(prefix)), 0.0) \
            if total else 0.0

    fixes = []
    if share("`commit_cycle`") > 0.15:
        fixes.append("`commit_cycle` serialises every incident and revision each cycle "
                     "(`Incident.to_state` through `dataclasses.asdict`, "
                     "`RevisionFacts.to_state`, `json.dumps`) to find or write what changed: "
                     "the state machine should mark the incidents and revisions it touches and "
                     "the store serialise only those, on both stores")
    if share("`load_state`") > 0.1:
        fixes.append("`load_state` parses every incident and revision (a `parse_time` per "
                     "timestamp) every cycle: `monitor run` could keep the state in memory "
                     "between its cycles, or load only open incidents and recent revisions")
    if share("`correlate/incidents.py") > 0.2:
        fixes.append("`correlate/incidents.py:advance` should copy only what it changes")
    if share("`correlate/source_incident.py") > 0.1:
        fixes.append("`correlate/source_incident.py:source_health` should not copy the state when "
                     "nothing changes")
    if fixes:
        text += (" What the per-cycle cost of the retained month is made of, and its fix: "
                 + "; ".join(f"({n}) {f}" for n, f in enumerate(fixes, 1)) + ".")
    return text


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
