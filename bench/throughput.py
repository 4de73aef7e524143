"""Throughput: entries per second through a whole check cycle, against the bare client's floor.

What is measured: one `run_cycle` (read over gRPC from the emulator, normalise, deduplicate,
classify, correlate, commit state + dedupe keys + checkpoint + outbox to SQLite in a temp dir,
deliver to a console notifier writing to io.StringIO) over a backlog of N generated Cloud Run
entries, with `max_pages_per_cycle` large enough to read everything in one cycle and the request
rate limit lifted (the default 30 requests a minute would make the benchmark measure the budget).

Why that baseline: the floor is what a hand-written script that reads the same entries costs at
least: the generated `LoggingServiceV2Client.list_log_entries` (pages of 1,000, insecure gRPC
channel, the very filter the cycle sends) iterating every entry of the same emulator and doing
nothing with it. The monitor cannot read faster than its own client library; the question is how
much the rest of the cycle adds. Target: the cycle within 1.3x of the floor's time.

What is read: everything. The cycle's source is built without a selection (as with
`source.select: false`), so its filter selects every entry of the watched services in the
window, and the figure is the cost per entry of the whole backlog; a selective read (the shipped
default) reads fewer entries, not cheaper ones. The floor gets the filter from that same source
(`CloudLoggingSource.filter_for`, in the parent), and each cycle reports the filter its source
sent: a run where the two differ fails rather than compare unlike reads.

Both run in fresh child processes (the emulator in a third), alternating, so each figure is the
median of runs made under the same conditions.
"""

from __future__ import annotations

import io
import json
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

from bench.common import (
    Options,
    Section,
    child,
    fmt_int,
    fmt_mb,
    fmt_s,
    frame_buckets,
    median,
    peak_rss_kb,
    ratio,
    table,
)
from bench.emulator_proc import EmulatorProcess

PROJECT = "bench-prod"
SERVICES = ["storefront", "checkout", "admin"]
TARGET = 1.3


# Where a cycle's time goes: (label, the function whose inclusive time it is, the end of the
# path of the file that defines it: "" for any file)
BUCKETS = [
    ("read: the gRPC call (transport + protobuf parsing: the floor's own work)",
     "list_log_entries", ""),
    ("read: protobuf entry -> LogEntry (`sources/cloud_logging.py:_from_pb`, `entries.normalise`)",
     "_from_pb", ""),
    ("dedupe lookup (`store/sqlite.py:SQLiteStore.seen_keys`)", "seen_keys", ""),
    ("load state (`SQLiteStore.load_state`)", "load_state", ""),
    ("classify (`classify/__init__.py:ClassifyStream.feed`)", "feed", "classify/__init__.py"),
    ("correlate (`correlate/incidents.py:Fold.add`)", "add", "correlate/incidents.py"),
    ("commit (`store/sqlite.py:SQLiteStore.commit_cycle`: state, dedupe keys, checkpoint, "
     "outbox)", "commit_cycle", ""),
    ("deliver (`notify/outbox.py:drain`)", "drain", ""),
]


def _buckets_cprofile(stats: Any) -> dict[str, float]:
    out: dict[str, float] = {"total": 0.0}
    for (path, _, name), (_, _, _, cumulative, _) in stats.stats.items():
        if name == "run_cycle":
            out["total"] = max(out["total"], cumulative)
        for label, fn, where in BUCKETS:
            if name == fn and path.endswith(where):
                out[label] = max(out.get(label, 0.0), cumulative)
    return out


def _window(args: dict[str, Any]) -> Any:
    from monitor.times import parse_time
    from monitor.window import plan_window

    now = parse_time(args["now"])
    return plan_window(None, now, since=timedelta(seconds=args["since"]), default_lookback=None,
                       max_lateness=timedelta(minutes=10))


def _source(args: dict[str, Any]) -> Any:
    """The cycle's source: every entry (no selection), no request budget to speak of."""
    from monitor.sources.budget import RateLimiter
    from monitor.sources.cloud_logging import CloudLoggingSource

    return CloudLoggingSource(project=args["project"], services=args["services"],
                              api_endpoint=args["endpoint"], max_pages=100_000,
                              limiter=RateLimiter(10**9), timeout=timedelta(seconds=120),
                              selection=None)


def _filter(args: dict[str, Any]) -> str:
    """The filter the cycle's source sends for the benchmark's window."""
    result: str = _source(args).filter_for(_window(args))
    return result


def run_floor(args: dict[str, Any]) -> dict[str, Any]:
    """The bare generated client iterating every entry the cycle would read."""
    import grpc
    from google.auth.credentials import AnonymousCredentials
    from google.cloud.logging_v2.services.logging_service_v2 import LoggingServiceV2Client
    from google.cloud.logging_v2.services.logging_service_v2.transports import (
        LoggingServiceV2GrpcTransport,
    )

    channel = grpc.insecure_channel(args["endpoint"])
    client = LoggingServiceV2Client(transport=LoggingServiceV2GrpcTransport(
        channel=channel, credentials=AnonymousCredentials()))  # type: ignore[no-untyped-call]
    request = {"resource_names": [f"projects/{args['project']}"], "filter": args["filter"],
               "order_by": "timestamp asc", "page_size": 1000}
    started = time.perf_counter()
    n = 0
    for _entry in client.list_log_entries(request=request, retry=None, timeout=120):
        n += 1
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "entries": n, "maxrss_kb": peak_rss_kb(),
            "filter": args["filter"]}


def run_cycle_child(args: dict[str, Any]) -> dict[str, Any]:
    """One whole cycle over the backlog, optionally profiled."""
    from bench.common import config_dict
    from monitor.check import run_cycle
    from monitor.config import parse_config
    from monitor.notify.console import ConsoleNotifier
    from monitor.store import open_store
    from monitor.times import parse_time

    state = Path(tempfile.mkdtemp(prefix="bench-cycle-", dir=args["workdir"]))
    config = parse_config(config_dict(project=args["project"], services=args["services"],
                                      endpoint=args["endpoint"], max_pages=100_000,
                                      state_url=f"sqlite:///{state}/state.db"), env={})
    source = _source(args)
    store = open_store(config.state.url)
    out = io.StringIO()
    profiler: Any = None
    if args.get("profile") == "pyinstrument":
        from pyinstrument import Profiler

        profiler = Profiler(interval=0.001)
        profiler.start()
    elif args.get("profile") == "cprofile":
        import cProfile

        profiler = cProfile.Profile()
        profiler.enable()
    started = time.perf_counter()
    result = run_cycle(config, store, source, ConsoleNotifier(out), unit=args["project"],
                       services=args["services"], project=args["project"],
                       now=parse_time(args["now"]), since=timedelta(seconds=args["since"]))
    seconds = time.perf_counter() - started
    report: dict[str, Any] = {
        "seconds": seconds, "entries": result.stats.entries_read,
        "api_requests": result.stats.api_requests, "transitions": len(result.transitions),
        "messages": len(result.messages), "error": result.error, "maxrss_kb": peak_rss_kb(),
        "incidents": len(result.state.incidents),
        "filter": source.filter_for(result.window)}  # what its read sent
    if args.get("profile") == "pyinstrument":
        profiler.stop()
        report["profile_tree"] = profiler.output_text(unicode=False, color=False,
                                                      time="percent_of_total")
        report["buckets"] = frame_buckets(profiler.last_session.root_frame(), BUCKETS)
    elif args.get("profile") == "cprofile":
        import pstats

        profiler.disable()
        buf = io.StringIO()
        pstats.Stats(profiler, stream=buf).sort_stats("cumulative").print_stats(30)
        report["profile_tree"] = buf.getvalue()
        report["buckets"] = _buckets_cprofile(pstats.Stats(profiler))
    store.close()
    return report


def _profiler() -> str:
    try:
        import pyinstrument  # noqa: F401
    except ImportError:
        return "cprofile"
    return "pyinstrument"


def _trim_tree(text: str, lines: int = 45) -> str:
    """The profile's call tree, without the header, cut to its top lines."""
    body = [line for line in text.splitlines() if line.strip()]
    start = next((i for i, line in enumerate(body) if "run_cycle" in line), 0)
    return "\n".join(body[start:start + lines])


def measure(opts: Options, emu: EmulatorProcess, sizes: list[int],
            progress: Any = print) -> Section:
    section = Section("Throughput: a whole cycle against the bare client")
    section.intro = (
        "One `run_cycle` over a backlog of N generated entries (request logs, app lines, stack "
        "traces, Prisma output at start-ups, a live `MissingSessionTableError` incident) read "
        "over gRPC from the emulator (another process), classified, correlated and committed to "
        "SQLite, against the floor: the bare generated `LoggingServiceV2Client.list_log_entries` "
        "(pages of 1,000, insecure channel, the very filter the cycle sends) iterating the "
        "same entries. Everything is read: the cycle's source has no selection (as with "
        "`source.select: false`), so this is the cost per entry of the whole backlog. "
        f"Medians of {opts.runs} run(s), each in a fresh process; target: cycle time <= "
        f"{TARGET}x the floor's.")
    rows = []
    first = emu.hello["first"][0]
    results: dict[int, dict[str, Any]] = {}
    for size in sizes:
        now = emu.ask(f"ts 0 {size}")
        from monitor.times import parse_time

        since = (parse_time(now) - parse_time(first)).total_seconds() + 1
        args = {"endpoint": emu.grpc, "project": PROJECT, "services": SERVICES, "now": now,
                "since": since, "workdir": str(opts.workdir)}
        args["filter"] = _filter(args)
        floors, cycles = [], []
        timeout = 120 + size / 1000
        for run in range(opts.runs):
            floors.append(child("throughput", {**args, "mode": "floor"}, timeout))
            cycles.append(child("throughput", {**args, "mode": "cycle"}, timeout * 3))
            progress(f"  throughput {size:,}: run {run + 1}/{opts.runs}: floor "
                     f"{floors[-1]['seconds']:.2f}s, cycle {cycles[-1]['seconds']:.2f}s")
        floor_s = median([f["seconds"] for f in floors])
        cycle_s = median([c["seconds"] for c in cycles])
        entries = cycles[0]["entries"]
        if any(c["error"] for c in cycles):
            raise RuntimeError(f"a cycle failed: {[c['error'] for c in cycles]}")
        if any(c["filter"] != args["filter"] for c in cycles):
            raise RuntimeError("the cycle read with another filter than the floor: "
                               f"{cycles[0]['filter']!r} vs {args['filter']!r}")
        results[size] = {"floor": floor_s, "cycle": cycle_s, "entries": entries,
                         "floor_entries": floors[0]["entries"],
                         "rss": median([c["maxrss_kb"] for c in cycles]),
                         "floor_rss": median([f["maxrss_kb"] for f in floors]),
                         "requests": cycles[0]["api_requests"],
                         "incidents": cycles[0]["incidents"]}
        rows.append([fmt_int(entries), fmt_s(floor_s), fmt_int(floors[0]["entries"] / floor_s),
                     fmt_s(cycle_s), fmt_int(entries / cycle_s), ratio(cycle_s, floor_s),
                     fmt_int(cycles[0]["api_requests"]), fmt_mb(results[size]["floor_rss"]),
                     fmt_mb(results[size]["rss"])])
        section.targets.append((f"cycle <= {TARGET}x floor at {entries:,} entries",
                                ratio(cycle_s, floor_s), cycle_s <= TARGET * floor_s))
    section.tables.append(table(
        ["entries", "floor time (baseline)", "floor entries/s", "cycle time", "cycle entries/s",
         "cycle / floor", "API requests", "floor peak RSS", "cycle peak RSS"], rows))
    # the profile: one extra run at the first size, not counted in the figures
    kind = _profiler()
    size = sizes[0]
    now = emu.ask(f"ts 0 {size}")
    from monitor.times import parse_time

    since = (parse_time(now) - parse_time(first)).total_seconds() + 1
    prof = child("throughput", {"endpoint": emu.grpc, "project": PROJECT, "services": SERVICES,
                                "now": now, "since": since, "workdir": str(opts.workdir),
                                "mode": "cycle", "profile": kind}, 600)
    buckets = prof["buckets"]
    total = buckets.get("total") or prof["seconds"]
    shares = [[label, f"{buckets.get(label, 0.0):.3f} s",
               f"{100 * buckets.get(label, 0.0) / total:.0f} %"] for label, *_ in BUCKETS]
    rest = total - sum(buckets.get(label, 0.0) for label, *_ in BUCKETS)
    shares.append(["everything else in `run_cycle`", f"{rest:.3f} s",
                   f"{100 * rest / total:.0f} %"])
    section.tables.append(
        f"Where the cycle's time goes: one profiled cycle over {prof['entries']:,} entries "
        f"({kind}; {total:.2f} s with the profiler on), inclusive time of each step:\n\n"
        + table(["step", "time", "share of the cycle"], shares))
    section.notes.append(
        f"Profile of that cycle ({kind}), call tree, top lines"
        f"{' (% of the whole run)' if kind == 'pyinstrument' else ''}:\n\n```\n"
        f"{_trim_tree(prof['profile_tree'])}\n```\n")
    section.data["results"] = results
    section.data["profile"] = prof
    return section


def main(argv: list[str]) -> int:
    if argv[:1] == ["child"]:
        args = json.loads(argv[1])
        report = run_floor(args) if args["mode"] == "floor" else run_cycle_child(args)
        print(json.dumps(report))
        return 0
    print("usage: python -m bench.run (this module is driven by bench.run)", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
