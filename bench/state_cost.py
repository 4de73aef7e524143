"""Cost of state: store size and cycle time after 30 (and 45) simulated days of history.

What is measured: 45 days (2 with --quick) of generated traffic for five services (about 14,000
entries a day: requests, app lines, deploys every ~8 h with their Prisma output, a broken deploy
and its fix every sixth deploy) are read from the emulator one simulated hour per cycle into a
SQLite store and a PostgreSQL one, exactly as `monitor run` would have read them (checkpoints,
dedupe keys, incidents, revisions, outbox, console notifier). After day 1, 7, 15, 30 and 45 each
store is copied, a probe cycle is timed on fresh copies, and its size and rows are recorded.
The probe is the cycle a 60-second poll would run next (one minute of new entries), so its time
is mostly the cost of the state itself.

Why those baselines: the same probe cycle on the store after one day of history shows what a
month of history costs; the probe 15 days past the 30-day retention horizon against the one at
the horizon shows whether retention keeps the store bounded and the cycle flat. Anything kept
forever, or rewritten every cycle, shows up as growth here. The PostgreSQL store
is measured the same way when the local server answers (127.0.0.1:5432, a throwaway database).
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import sqlite3
import tempfile
import time
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

from bench.common import (
    Options,
    Section,
    config_dict,
    fmt_s,
    frame_buckets,
    median,
    ratio,
    table,
)
from bench.emulator_proc import EmulatorProcess
from bench.traffic import T0

PROJECT = "bench-prod"
SERVICES = ["storefront", "checkout", "admin", "webhooks", "billing"]
FLAT = 1.25
PROBE = timedelta(seconds=60)  # the probe: the cycle a 60 s poll runs next
BOUNDED = 1.10
TABLES = ("incidents", "revisions", "seen", "outbox", "threads")
PG_ADMIN_URL = os.environ.get("MONITOR_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")


def emulator_spec(days: int) -> dict[str, Any]:
    return {"datasets": [{
        "seed": 30, "project": PROJECT, "services": SERVICES, "seconds": days * 86400 + 7200,
        "profile": {"requests_per_second": 0.1, "deploy_every": 8 * 3600, "incident_every": 6,
                    "incident_services": len(SERVICES), "first_deploy_after": 3 * 3600,
                    "incident_length": 1500}}]}


class SQLiteBackend:
    """The store in a file; a probe works on a copy of the file."""

    name = "SQLite"

    def __init__(self, work: Path) -> None:
        self.db = work / "sqlite" / "state.db"
        self.db.parent.mkdir(parents=True)
        self.url = f"sqlite:///{self.db}"
        self._copies = 0

    def size(self) -> int:
        return sum(p.stat().st_size for p in self.db.parent.glob(self.db.name + "*"))

    def rows(self) -> dict[str, int]:
        with sqlite3.connect(f"file:{self.db}?mode=ro", uri=True) as conn:
            return {t: int(conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0])
                    for t in TABLES}

    def copy(self) -> str:
        self._copies += 1
        target = self.db.parent.parent / f"sqlite-copy-{self._copies}" / "state.db"
        target.parent.mkdir()
        shutil.copy(self.db, target)
        return f"sqlite:///{target}"

    def drop(self, url: str) -> None:
        shutil.rmtree(Path(url.removeprefix("sqlite:///")).parent, ignore_errors=True)

    def close(self) -> None:
        pass


class PostgresBackend:
    """A throwaway database on the local server; a probe works on a `TEMPLATE` copy of it."""

    name = "PostgreSQL"

    def __init__(self, admin_url: str) -> None:
        import psycopg

        self._admin = psycopg.connect(admin_url, autocommit=True, connect_timeout=5)
        self._base = admin_url.rsplit("/", 1)[0]
        self.dbname = f"monitor_bench_{os.getpid()}_{uuid.uuid4().hex[:8]}"
        self._admin.execute(f'CREATE DATABASE "{self.dbname}"')
        self.url = f"{self._base}/{self.dbname}"
        self._copies: list[str] = []
        self.autovacuum = str(self._admin.execute("SHOW autovacuum").fetchone()[0])

    def _query(self, sql: str) -> Any:
        import psycopg

        with psycopg.connect(self.url, connect_timeout=5) as conn:
            return conn.execute(sql).fetchall()

    def size(self) -> int:
        """Tables with their indexes and TOAST, as pg_total_relation_size counts them."""
        rows = self._query("SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0) FROM pg_class c "
                           "JOIN pg_namespace n ON n.oid = c.relnamespace "
                           "WHERE n.nspname = 'public' AND c.relkind = 'r'")
        return int(rows[0][0])

    def rows(self) -> dict[str, int]:
        counts = {t: int(self._query(f"SELECT count(*) FROM {t}")[0][0]) for t in TABLES}
        stats = self._query("SELECT relname, n_dead_tup, autovacuum_count + vacuum_count "
                            "FROM pg_stat_user_tables")
        dead = {str(name): int(n) for name, n, _ in stats}
        vacuums = sum(int(v) for _, _, v in stats)
        return {**counts, "dead": sum(dead.values()), "vacuums": vacuums,
                **{f"dead:{name}": n for name, n in dead.items()}}

    def vacuum(self) -> None:
        """What autovacuum does (off on this server; Cloud SQL runs it): dead row versions
        become reusable space, so the tables stop growing by what the cycles rewrote."""
        import psycopg

        with psycopg.connect(self.url, autocommit=True, connect_timeout=5) as conn:
            conn.execute("VACUUM")

    def copy(self) -> str:
        name = f"{self.dbname}_c{len(self._copies)}"
        self._admin.execute(f'CREATE DATABASE "{name}" TEMPLATE "{self.dbname}"')
        self._copies.append(name)
        return f"{self._base}/{name}"

    def drop(self, url: str) -> None:
        self._admin.execute(f'DROP DATABASE IF EXISTS "{url.rsplit("/", 1)[1]}" WITH (FORCE)')

    def close(self) -> None:
        for name in [*self._copies, self.dbname]:
            with contextlib.suppress(Exception):
                self._admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        self._admin.close()


def backends(work: Path) -> tuple[list[Any], str | None]:
    """SQLite always; PostgreSQL when psycopg is installed and the server answers."""
    found: list[Any] = [SQLiteBackend(work)]
    try:
        found.append(PostgresBackend(PG_ADMIN_URL))
    except Exception as exc:
        return found, f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:200]}"
    return found, None


def measure(opts: Options, progress: Any = print) -> Section:
    from monitor import sources
    from monitor.check import run_cycle
    from monitor.config import parse_config
    from monitor.notify.console import ConsoleNotifier
    from monitor.sources.budget import RateLimiter
    from monitor.store import open_store

    days = 2 if opts.quick else 45
    probe_days = [1, 2] if opts.quick else [1, 7, 15, 30, 45]
    section = Section(f"Cost of state: {days} simulated days")
    work = Path(tempfile.mkdtemp(prefix="bench-state-", dir=opts.workdir))
    stores, pg_missing = backends(work)
    probes: dict[tuple[str, int], dict[str, Any]] = {}
    profiles: dict[str, tuple[str, str, dict[str, float]]] = {}
    loaded = time.perf_counter()
    try:
        with EmulatorProcess(emulator_spec(days)) as emu:
            loaded = time.perf_counter() - loaded
            progress(f"  state: {emu.hello['entries']:,} entries for {days} days loaded in "
                     f"{loaded:.0f}s; stores: {', '.join(b.name for b in stores)}")
            cfg = parse_config(config_dict(project=PROJECT, services=SERVICES,
                                           endpoint=emu.grpc, signals=3,
                                           state_url="sqlite:///unused.db"), env={})
            out = io.StringIO()

            def cycle(store: Any, at: timedelta) -> tuple[float, Any]:
                source = sources.build(cfg, cfg.units[0], limiter=RateLimiter(10**9))
                started = time.perf_counter()
                result = run_cycle(cfg, store, source, ConsoleNotifier(out), unit=PROJECT,
                                   services=SERVICES, project=PROJECT, now=T0 + at,
                                   since=timedelta(hours=1))
                if result.error:
                    raise RuntimeError(f"cycle at {T0 + at} failed: {result.error}")
                out.seek(0)
                out.truncate()
                return time.perf_counter() - started, result

            live = {b.name: open_store(b.url) for b in stores}
            for day in range(1, days + 1):
                times: dict[str, list[float]] = {b.name: [] for b in stores}
                for hour in range((day - 1) * 24 + 1, day * 24 + 1):
                    for b in stores:
                        times[b.name].append(cycle(live[b.name], timedelta(hours=hour))[0])
                for b in stores:
                    if isinstance(b, PostgresBackend) and b.autovacuum != "on":
                        b.vacuum()  # once a simulated day, standing in for autovacuum
                if day not in probe_days:
                    continue
                for b in stores:
                    live[b.name].close()
                    got = probes[(b.name, day)] = _probe(b, cycle, opts.runs, day, times[b.name])
                    progress(f"  state: {b.name} day {day}: {got['size'] / 1024:,.0f} KB, "
                             f"probe cycle {got['seconds'] * 1000:.0f} ms")
                    if day == probe_days[-1]:
                        profiles[b.name] = _profile(b, cycle, day)
                    live[b.name] = open_store(b.url)
            for store in live.values():
                store.close()
    finally:
        for b in stores:
            b.close()
    names = [b.name for b in stores]
    rows_out = []
    for name in names:
        base = probes[(name, probe_days[0])]
        for day in probe_days:
            p = probes[(name, day)]
            r = p["rows"]
            rows_out.append([name, day, f"{p['size'] / 1024:,.0f} KB",
                             ratio(p["size"], base["size"]), r["incidents"], r["revisions"],
                             r["seen"], r["outbox"], fmt_s(p["seconds"]),
                             ratio(p["seconds"], base["seconds"]), fmt_s(p["load"]),
                             fmt_s(p["day_median"]), p["entries"],
                             f"{r['dead']:,} / {r['vacuums']}" if "dead" in r else "n/a"])
    if pg_missing:
        rows_out.append(["PostgreSQL", "-", f"not measured: {pg_missing}", "", "", "", "", "",
                         "", "", "", "", "", ""])
    pg = next((b for b in stores if isinstance(b, PostgresBackend)), None)
    autovacuum = pg.autovacuum if pg is not None else "n/a"
    section.intro = (
        f"{days} days of generated history for {len(SERVICES)} services, read one simulated "
        "hour per cycle (the same entries into each store). Probe: the cycle a 60 s poll runs "
        "next (one minute of new entries) on a copy of the store (a file copy; for PostgreSQL a "
        f"`CREATE DATABASE ... TEMPLATE`), median of {opts.runs} run(s); baseline: the same "
        f"store on day {probe_days[0]}. PostgreSQL is the local server (127.0.0.1:5432), a "
        "throwaway database dropped afterwards; its size is `pg_total_relation_size` of the "
        "tables (indexes and TOAST included), SQLite's the file on disk. This server runs "
        f"with `autovacuum = {autovacuum}`"
        + (": a plain `VACUUM` runs once per simulated day in its place (Cloud SQL runs "
           "autovacuum), so the size counts live rows and reusable space, not every dead row "
           "version since day 1. " if autovacuum != "on" else ". ")
        + "The store's retention horizon is 30 days (`monitor/store/base.py:RETENTION`), so the "
        "history runs past it and the targets compare the last two probes: bounded and flat "
        "once retention applies; the ratios to day 1 show what a month of retained history "
        "costs. Sent messages go with their incident when retention deletes it.")
    section.tables.append(table(
        ["store", "day", "size", "size ratio", "incidents", "revisions", "dedupe keys (seen)",
         "outbox rows", "probe cycle time", "cycle ratio", "of which load_state",
         "median hourly cycle that day", "entries in probe",
         "dead row versions / vacuums (PostgreSQL)"], rows_out))
    for name in names:
        last, mid = probes[(name, probe_days[-1])], probes[(name, probe_days[-2])]
        section.targets.append((f"{name} store bounded: size day {probe_days[-1]} vs day "
                                f"{probe_days[-2]} <= {BOUNDED:.2f}x",
                                ratio(last["size"], mid["size"]),
                                last["size"] <= BOUNDED * mid["size"]))
        section.targets.append((f"{name} cycle time flat: day {probe_days[-1]} vs day "
                                f"{probe_days[-2]} <= {FLAT:.2f}x",
                                ratio(last["seconds"], mid["seconds"]),
                                last["seconds"] <= FLAT * mid["seconds"]))
    for name, (kind, text, shares) in profiles.items():
        total = shares.get("total") or 0.0
        if total:
            section.tables.append(
                f"Where the day-{probe_days[-1]} probe cycle's time goes on {name} (one "
                f"profiled run, {total * 1000:.0f} ms with the profiler on):\n\n" + table(
                    ["step", "share of the cycle"],
                    [[label, f"{100 * shares.get(label, 0.0) / total:.0f} %"]
                     for label, _ in STATE_BUCKETS]))
        section.notes.append(f"Profile of the day-{probe_days[-1]} probe cycle on {name} "
                             f"({kind}), call tree, top lines:\n\n```\n{text}\n```\n")
    section.data.update(probes={name: {d: probes[(name, d)] for d in probe_days}
                                for name in names}, days=days, autovacuum=autovacuum,
                        shares={name: p[2] for name, p in profiles.items()})
    return section


def _probe(backend: Any, cycle: Any, runs: int, day: int, times: list[float]) -> dict[str, Any]:
    """Size, rows, and the probe cycle timed on fresh copies of the store."""
    from monitor.store import open_store

    size, rows = backend.size(), backend.rows()
    results, entries = [], 0
    for _ in range(runs):
        url = backend.copy()
        store = open_store(url)
        try:
            seconds, result = cycle(store, PROBE + timedelta(days=day))
            entries = result.stats.entries_read
            started = time.perf_counter()
            store.load_state()
            results.append((seconds, time.perf_counter() - started))
        finally:
            store.close()
            backend.drop(url)
    return {"size": size, "rows": rows, "seconds": median([r[0] for r in results]),
            "load": median([r[1] for r in results]), "entries": entries,
            "day_median": median(times)}


STATE_BUCKETS = [
    ("`correlate/source_incident.py:source_health`", "source_health"),
    ("`correlate/incidents.py:advance`", "advance"),
    ("`commit_cycle`", "commit_cycle"),
    ("`load_state`", "load_state"),
    ("reading the minute's entries (`check.fresh_pages`)", "_live"),
]


def _profile(backend: Any, cycle: Any, day: int) -> tuple[str, str, dict[str, float]]:
    """The probe cycle once more, profiled (pyinstrument if installed, else cProfile)."""
    from monitor.store import open_store

    url = backend.copy()
    store = open_store(url)
    try:
        try:
            from pyinstrument import Profiler
        except ImportError:
            import cProfile
            import pstats

            prof = cProfile.Profile()
            prof.enable()
            cycle(store, PROBE + timedelta(days=day))
            prof.disable()
            buf = io.StringIO()
            pstats.Stats(prof, stream=buf).sort_stats("cumulative").print_stats(25)
            return "cProfile", buf.getvalue().strip(), {}
        profiler = Profiler(interval=0.0005)
        profiler.start()
        cycle(store, PROBE + timedelta(days=day))
        profiler.stop()
        text = profiler.output_text(unicode=False, color=False, time="percent_of_total")
        lines = [line for line in text.splitlines() if line.strip()]
        start = next((i for i, line in enumerate(lines) if "run_cycle" in line), 0)
        session = profiler.last_session
        shares = frame_buckets(session.root_frame(), STATE_BUCKETS) if session else {}
        return "pyinstrument, % of the cycle", "\n".join(lines[start:start + 40]), shares
    finally:
        store.close()
        backend.drop(url)
