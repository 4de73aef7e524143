"""Memory: peak RSS of one cycle over a small and a huge backlog, and of `monitor run` over time.

What is measured:
- a cycle over a backlog of 10,000 and of 1,000,000 entries (50,000 with --quick), each in a fresh
  child process (peak RSS from `getrusage(RUSAGE_SELF).ru_maxrss`), with the shipped default
  `max_pages_per_cycle` (20 pages of 1,000): the emulator holds the backlog in ANOTHER process,
  so only the monitor's own memory is counted. Target: the two peaks within 25 % of each other,
  i.e. the backlog is streamed a budget at a time and never held whole.
- `monitor once` (a subprocess: peak RSS from `wait4`'s `ru_maxrss` of the child) replaying a
  generated export of 10,000 and of 1,000,000 entries (2,000 and 20,000 with --quick), written as
  `gcloud logging read --format=json` writes it: a pretty-printed JSON array, newest first.
  Target: the two peaks within 25 %, i.e. the replay is folded page by page in event order and
  no entry outlives its page, whatever the export's size and order.
- `monitor run` (a subprocess, `poll.interval: 100ms`) over 1,000 cycles (50 with --quick) while
  realistic traffic keeps arriving in the emulator and incidents open and resolve in the local
  Slack server: VmRSS from /proc/PID/status sampled twice a second. Target: no growth after
  warm-up (the first 10 % of the cycles): the RSS at the end within 5 % of the RSS after warm-up.

Why these baselines: the small backlog is the cost of a cycle that fits in one budget, so the
ratio shows what a backlog adds; for the long run the baseline is the same process after
warm-up, so the ratio shows growth alone, not the interpreter's and libraries' fixed footprint.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from bench.common import (
    ROOT,
    MonitorRun,
    Options,
    Section,
    child,
    config_dict,
    fmt_int,
    fmt_mb,
    median,
    peak_rss_kb,
    ratio,
    rss_kb,
    table,
    write_config,
)
from bench.emulator_proc import EmulatorProcess

PROJECT = "bench-prod"
SERVICES = ["storefront", "checkout", "admin"]
CYCLE_TARGET = 1.25
GROWTH_TARGET = 1.05


def run_cycle_child(args: dict[str, Any]) -> dict[str, Any]:
    """One cycle with the shipped budget, as `monitor once` builds it."""
    import io

    from monitor import sources
    from monitor.check import run_cycle
    from monitor.config import parse_config
    from monitor.notify.console import ConsoleNotifier
    from monitor.store import open_store
    from monitor.times import parse_time

    state = Path(tempfile.mkdtemp(prefix="bench-mem-", dir=args["workdir"]))
    config = parse_config(config_dict(project=PROJECT, services=SERVICES,
                                      endpoint=args["endpoint"],
                                      state_url=f"sqlite:///{state}/state.db"), env={})
    unit = config.units[0]
    source = sources.build(config, unit)
    store = open_store(config.state.url)
    before = rss_kb() or 0
    started = time.perf_counter()
    result = run_cycle(config, store, source, ConsoleNotifier(io.StringIO()), unit=PROJECT,
                       services=SERVICES, project=PROJECT, now=parse_time(args["now"]),
                       since=timedelta(seconds=args["since"]))
    seconds = time.perf_counter() - started
    store.close()
    return {"entries": result.stats.entries_read, "api_requests": result.stats.api_requests,
            "cut": result.stats.cut_at is not None, "maxrss_kb": peak_rss_kb(),
            "before_kb": before, "seconds": seconds, "error": result.error,
            "max_pages": config.source.max_pages_per_cycle}


def measure_cycles(opts: Options, emu: EmulatorProcess, sizes: list[int],
                   unbounded: dict[int, dict[str, Any]], progress: Any = print) -> Section:
    from monitor.times import parse_time

    section = Section("Memory: one cycle over a backlog")
    section.intro = (
        "Peak RSS (`ru_maxrss`) of one cycle in a fresh process, with the shipped "
        "`max_pages_per_cycle: 20`; the emulator holding the backlog runs in another process. "
        f"Medians of {opts.runs} run(s). Baseline: the smallest backlog. Target: within 25 %.")
    first = emu.hello["first"][0]
    rows, peaks = [], {}
    for size in sizes:
        now = emu.ask(f"ts 0 {size}")
        since = (parse_time(now) - parse_time(first)).total_seconds() + 1
        runs = []
        for _ in range(opts.runs):
            runs.append(child("memory", {"mode": "cycle", "endpoint": emu.grpc, "now": now,
                                         "since": since, "workdir": str(opts.workdir)}, 600))
        if any(r["error"] for r in runs):
            raise RuntimeError(f"a cycle failed: {runs[0]['error']}")
        peak = median([r["maxrss_kb"] for r in runs])
        peaks[size] = peak
        progress(f"  memory: backlog {size:,}: peak {peak / 1024:.1f} MB")
        rows.append([f"{size:,}", fmt_int(runs[0]["entries"]), runs[0]["api_requests"],
                     "yes" if runs[0]["cut"] else "no",
                     fmt_mb(median([r["before_kb"] for r in runs])), fmt_mb(peak),
                     ratio(peak, peaks[sizes[0]])])
    section.tables.append(table(
        ["backlog (entries)", "read this cycle", "API requests", "budget spent (continues "
         "next cycle)", "RSS before the cycle", "peak RSS", "ratio to baseline"], rows))
    big, small = peaks[sizes[-1]], peaks[sizes[0]]
    section.targets.append((f"peak RSS, {sizes[-1]:,} vs {sizes[0]:,} backlog, within 25 %",
                            ratio(big, small), big <= CYCLE_TARGET * small))
    if unbounded:
        extra = [[f"{n:,}", fmt_int(r["entries"]), fmt_mb(r["floor_rss"]), fmt_mb(r["rss"]),
                  ratio(r["rss"], r["floor_rss"])] for n, r in sorted(unbounded.items())]
        section.tables.append(
            "Without the budget (the throughput runs: `max_pages_per_cycle` large enough to read "
            "the whole backlog in one cycle), against the bare client reading the same entries:"
            "\n\n" + table(["backlog", "read", "bare client peak RSS (baseline)",
                             "cycle peak RSS", "ratio"], extra))
    section.data["peaks"] = peaks
    return section


def write_export(path: Path, entries: int, seed: int = 7) -> Path:
    """`entries` generated entries (`Traffic(seed).take(entries)`) as `gcloud logging read
    --format=json` writes them: a JSON array, two-space indented, newest first. Written a minute
    of traffic at a time (each chunk reversed into a spool, the spool copied back to front), so
    a million entries never sit in memory here either."""
    from bench.traffic import Traffic

    traffic = Traffic(seed, project=PROJECT, services=tuple(SERVICES))
    spool = path.with_name(path.name + ".spool")
    chunks: list[tuple[int, int]] = []  # (offset, length) in the spool, oldest first
    written = 0
    with spool.open("wb") as f:
        for chunk in traffic.chunks(60):
            chunk = chunk[:entries - written]
            text = ",\n".join("  " + json.dumps(e, indent=2).replace("\n", "\n  ")
                              for e in reversed(chunk)).encode()
            if text:
                chunks.append((f.tell(), len(text)))
                f.write(text)
            written += len(chunk)
            if written >= entries:
                break
    with spool.open("rb") as f, path.open("wb") as out:
        out.write(b"[\n")
        for i, (offset, length) in enumerate(reversed(chunks)):
            f.seek(offset)
            out.write((b",\n" if i else b"") + f.read(length))
        out.write(b"\n]\n")
    spool.unlink()
    return path


def replay_config(path: Path, export: Path, state: Path) -> Path:
    """The shipped defaults, a file source, the bench's signal, console notifications (not
    paced: a replay posts every message it owes)."""
    from bench.common import signal_list

    return write_config(path, {
        "project": PROJECT, "services": SERVICES, "source": {"type": "file", "path": str(export)},
        "signals": signal_list(1), "migrations": {"tool": "prisma"},
        "slack": {"channel": "#bench", "token": "", "min_interval": "0s"},
        # a lease past the replay's length: `once` delivers only while it holds the unit
        "state": {"url": f"sqlite:///{state}", "lease": "2h"}})


def once_peak(config: Path, timeout: float = 1800) -> dict[str, Any]:
    """`monitor once --format json` in a child process: its peak RSS (`wait4`), time, stats."""
    workdir = config.parent
    with (workdir / "once.json").open("w") as out, (workdir / "once.log").open("w") as err:
        started = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-m", "monitor", "once", "--config",
                                 str(config), "--format", "json"], stdout=out, stderr=err,
                                cwd=ROOT)
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        proc.returncode = os.waitstatus_to_exitcode(status)
        seconds = time.perf_counter() - started
    if proc.returncode not in (0, 1):
        raise RuntimeError(f"monitor once exited {proc.returncode}; see {workdir / 'once.log'}")
    doc = json.loads((workdir / "once.json").read_text())
    return {"maxrss_kb": usage.ru_maxrss, "seconds": seconds, "entries": doc["stats"][
        "entries_read"], "incidents": len(doc["incidents"]), "revisions": len(doc["revisions"])}


def measure_replay(opts: Options, sizes: list[int], progress: Any = print) -> Section:
    """`monitor once` replaying a small and a huge export, each run with a fresh store."""
    section = Section("Memory: `monitor once` replaying an export")
    section.intro = (
        "Peak RSS (`ru_maxrss` of the child, from `wait4`) of `monitor once --format json` with "
        "a `file` source and a fresh SQLite store, replaying a generated export "
        "(bench/traffic.py, seed 7, three services) written as `gcloud logging read "
        "--format=json` writes it: a pretty-printed JSON array, newest first. The clock is the "
        "newest entry, as for any replay. Medians of "
        f"{opts.runs} run(s). Baseline: the smallest export. Target: within 25 %.")
    workdir = Path(tempfile.mkdtemp(prefix="bench-replay-", dir=opts.workdir))
    rows, peaks = [], {}
    for size in sizes:
        started = time.perf_counter()
        export = write_export(workdir / f"export-{size}.json", size)
        made = time.perf_counter() - started
        progress(f"  replay: wrote {size:,} entries ({export.stat().st_size / 1e6:,.0f} MB) "
                 f"in {made:.0f}s")
        runs = []
        for n in range(opts.runs):
            run_dir = workdir / f"run-{size}-{n}"
            run_dir.mkdir()
            runs.append(once_peak(replay_config(run_dir / "config.yaml", export,
                                                run_dir / "state.db")))
        peak = median([r["maxrss_kb"] for r in runs])
        peaks[size] = peak
        progress(f"  replay: {size:,} entries: peak {peak / 1024:.1f} MB")
        rows.append([f"{size:,}", f"{export.stat().st_size / 1e6:,.0f} MB",
                     fmt_int(runs[0]["entries"]), runs[0]["incidents"], runs[0]["revisions"],
                     f"{median([r['seconds'] for r in runs]):.1f} s", fmt_mb(peak),
                     ratio(peak, peaks[sizes[0]])])
        export.unlink()
    section.tables.append(table(
        ["export (entries)", "file size", "entries read", "incidents", "revisions",
         "wall time", "peak RSS", "ratio to baseline"], rows))
    big, small = peaks[sizes[-1]], peaks[sizes[0]]
    section.targets.append((f"peak RSS, {sizes[-1]:,} vs {sizes[0]:,} entries replayed, within "
                            "25 %", ratio(big, small), big <= CYCLE_TARGET * small))
    section.data["replay_peaks"] = peaks
    return section


def measure_run(opts: Options, cycles: int, progress: Any = print) -> Section:
    """`monitor run` over many cycles while traffic keeps arriving."""
    from bench.traffic import Profile, Traffic, to_ns
    from monitor.emulator import Emulator
    from tests.slack_server import SlackServer

    section = Section(f"Memory: `monitor run` over {cycles:,} cycles")
    workdir = Path(tempfile.mkdtemp(prefix="bench-run-", dir=opts.workdir))
    warm = max(cycles // 10, 5)
    samples: list[tuple[float, float, int]] = []  # (seconds, cycles, rss kB)
    with Emulator(rest=False) as emu, SlackServer() as slack:
        config = config_dict(project=PROJECT, services=SERVICES, endpoint=emu.grpc_endpoint,
                             state_url=f"sqlite:///{workdir}/state.db", interval="100ms",
                             max_lateness="2s", resolve_after="5s", max_requests_per_minute=600,
                             slack={"channel": "#bench", "token": slack.token,
                                    "base_url": slack.base_url, "update_every": "15m"})
        traffic = Traffic(11, project=PROJECT, services=tuple(SERVICES),
                          start=datetime.now(UTC), profile=Profile(
                              requests_per_second=30, deploy_every=timedelta(seconds=40),
                              incident_every=2, incident_length=timedelta(seconds=15),
                              first_deploy_after=timedelta(seconds=5)))
        stop = threading.Event()
        fed = [0]

        def feed() -> None:
            while not stop.wait(0.1):
                batch = traffic.advance(to_ns(datetime.now(UTC)))
                if batch:
                    emu.store.add(batch)
                    fed[0] += len(batch)

        feeder = threading.Thread(target=feed, name="feeder", daemon=True)
        feeder.start()
        monitor = MonitorRun(write_config(workdir / "config.yaml", config), workdir / "run.log")
        started = time.monotonic()
        limit = cycles * 0.6 + 60
        try:
            while True:
                done = monitor.metric("monitor_cycles_total", 'outcome="ok"')
                rss = monitor.rss_kb
                if rss is not None:
                    samples.append((time.monotonic() - started, done, rss))
                if done >= cycles or time.monotonic() - started > limit:
                    break
                if monitor.proc.poll() is not None:
                    raise RuntimeError(f"monitor run exited; see {workdir / 'run.log'}")
                time.sleep(0.5)
            errors = monitor.metric("monitor_cycles_total", 'outcome="error"')
            failed = monitor.metric("monitor_cycles_total", 'outcome="failed"')
            sent = monitor.metric("monitor_notifications_total", 'result="sent"')
        finally:
            stop.set()
            feeder.join(5)
            code = monitor.stop()
        posts = len(slack.calls_to("chat.postMessage"))
    elapsed = samples[-1][0] if samples else 0.0
    done = samples[-1][1] if samples else 0
    progress(f"  monitor run: {done:.0f} cycles in {elapsed:.0f}s, exit {code}")
    ready = samples[0][2]
    after_warm = [rss for _, c, rss in samples if warm <= c <= warm + max(cycles // 10, 5)]
    tail = [rss for _, c, rss in samples if c >= done - max(cycles // 10, 5)]
    warm_rss = median(after_warm) if after_warm else float(ready)
    end_rss = median(tail) if tail else float(samples[-1][2])
    post = [(c, rss) for _, c, rss in samples if c >= warm]
    slope = _slope(post) * 1000  # kB per 1,000 cycles
    section.intro = (
        f"`monitor run` as a subprocess, `poll.interval: 100ms`, reading a live emulator fed "
        f"~{traffic.profile.requests_per_second:g} requests/s of generated traffic (deploys every "
        "~40 s, an incident on every second deploy of one service) and alerting the local Slack "
        f"server. VmRSS sampled every 0.5 s ({len(samples)} samples); the figures are medians of "
        f"the samples in each phase. Warm-up: the first {warm} cycles. Baseline: the RSS just "
        f"after warm-up. Target: the RSS at the end within {GROWTH_TARGET:.2f}x of it.")
    section.tables.append(table(
        ["phase", "cycles", "RSS", "ratio to after-warm-up"],
        [["ready (first check done)", f"{samples[0][1]:.0f}", fmt_mb(ready),
          ratio(ready, warm_rss)],
         [f"after warm-up (cycles {warm}-{warm + max(cycles // 10, 5)})", f"{warm}",
          fmt_mb(warm_rss), "1.00x"],
         [f"end (last {max(cycles // 10, 5)} cycles)", f"{done:.0f}", fmt_mb(end_rss),
          ratio(end_rss, warm_rss)],
         ["max over the run", "", fmt_mb(max(r for _, _, r in samples)),
          ratio(max(r for _, _, r in samples), warm_rss)]]))
    section.tables.append(table(
        ["cycles run", "wall time", "cycles/s", "entries fed", "Slack posts", "notifications "
         "sent", "failed / error cycles", "RSS slope after warm-up", "exit code on SIGTERM"],
        [[f"{done:.0f}", f"{elapsed:.0f} s", f"{done / elapsed:.1f}" if elapsed else "n/a",
          fmt_int(fed[0]), posts, f"{sent:.0f}", f"{failed:.0f} / {errors:.0f}",
          f"{slope:+.0f} kB / 1,000 cycles", code]]))
    section.targets.append((f"RSS at the end vs after warm-up ({done:.0f} cycles)",
                            ratio(end_rss, warm_rss), end_rss <= GROWTH_TARGET * warm_rss
                            and done >= cycles))
    section.data.update(warm=warm_rss, end=end_rss, cycles=done, slope=slope, samples=samples)
    return section


def _slope(points: list[tuple[float, int]]) -> float:
    """Least-squares slope of rss over cycles."""
    if len(points) < 2:
        return 0.0
    n = len(points)
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    sxx = sum((x - mx) ** 2 for x, _ in points)
    return sum((x - mx) * (y - my) for x, y in points) / sxx if sxx else 0.0


def main(argv: list[str]) -> int:
    if argv[:1] == ["child"]:
        args = json.loads(argv[1])
        print(json.dumps(run_cycle_child(args)))
        return 0
    print("usage: python -m bench.run (this module is driven by bench.run)", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
