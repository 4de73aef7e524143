"""What the benchmarks share: child processes, medians, configs, the report's tables.

Rules: every timed piece of work that must not share a process with the emulator runs in a fresh
child (`python -m bench.<module> child '<json>'`) that prints one JSON line as its last line;
children are always bounded by a timeout. Figures are medians of the runs made in the same
invocation, and ratios are against a baseline measured in that same invocation.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import socket
import statistics
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Options:
    quick: bool
    runs: int
    workdir: Path


@dataclass
class Section:
    """One benchmark's part of the report: a title, tables (markdown), notes and a verdict."""

    title: str
    intro: str = ""
    tables: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    targets: list[tuple[str, str, bool | None]] = field(default_factory=list)  # what, figure, met
    data: dict[str, Any] = field(default_factory=dict)  # figures for the summary

    def markdown(self) -> str:
        out = [f"## {self.title}", ""]
        if self.intro:
            out += [self.intro, ""]
        for table in self.tables:
            out += [table, ""]
        if self.targets:
            out += ["| target | measured | met |", "|---|---|---|"]
            for what, figure, met in self.targets:
                verdict = "n/a" if met is None else ("**yes**" if met else "**no**")
                out.append(f"| {what} | {figure} | {verdict} |")
            out.append("")
        for note in self.notes:
            out += [note.rstrip(), ""]
        return "\n".join(out).rstrip() + "\n"


def table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100): with 50 samples, p99 is the largest."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * p // 100))
    return float(ordered[int(rank) - 1])


def ratio(value: float, base: float) -> str:
    return f"{value / base:.2f}x" if base else "n/a"


def fmt_s(seconds: float) -> str:
    return f"{seconds:.3f} s" if seconds < 10 else f"{seconds:.1f} s"


def fmt_int(n: float) -> str:
    return f"{n:,.0f}"


def fmt_mb(kb: float) -> str:
    return f"{kb / 1024:.1f} MB"


def child(module: str, args: dict[str, Any], timeout: float) -> dict[str, Any]:
    """Run `python -m bench.<module> child '<json>'` and return its last stdout line."""
    proc = subprocess.run([sys.executable, "-m", f"bench.{module}", "child", json.dumps(args)],
                          capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    if proc.returncode != 0:
        raise RuntimeError(f"bench.{module} child failed ({proc.returncode}):\n"
                           f"{proc.stderr[-3000:]}")
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    result: dict[str, Any] = json.loads(lines[-1])
    return result


def peak_rss_kb() -> int:
    """This process's peak resident set (Linux reports ru_maxrss in KB)."""
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


def rss_kb(pid: int | str = "self") -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def machine() -> dict[str, str]:
    mem = "unknown"
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
    except OSError:
        pass
    return {
        "cores": str(os.cpu_count()),
        "memory": mem,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "date": datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
    }


def config_dict(*, project: str, services: Sequence[str], endpoint: str, state_url: str,
                signals: int = 1, max_pages: int = 20, interval: str = "60s",
                max_lateness: str = "10m", resolve_after: str = "15m",
                slack: dict[str, Any] | None = None, transport: str = "grpc",
                max_requests_per_minute: int = 30) -> dict[str, Any]:
    """A monitor config as config.yaml would hold it, for the emulator."""
    return {
        "project": project,
        "services": list(services),
        "source": {"type": "cloud_logging", "transport": transport, "api_endpoint": endpoint,
                   "max_pages_per_cycle": max_pages,
                   "max_requests_per_minute": max_requests_per_minute},
        "poll": {"interval": interval, "max_lateness": max_lateness, "first_lookback": "1h"},
        "signals": signal_list(signals, resolve_after),
        "migrations": {"tool": "prisma"},
        "slack": slack or {"channel": "#bench", "token": ""},
        "state": {"url": state_url},
    }


# Realistic signatures a team would watch; the first is the incident's.
SIGNATURES = [
    "MissingSessionTableError", "PrismaClientInitializationError", r"Error: P1001\b",
    r"Error: P3009\b", r"Error: P3018\b", "ECONNREFUSED", "ECONNRESET", "ETIMEDOUT",
    "GraphqlQueryError: Throttled", "HttpResponseError: Received an error response \\(5\\d\\d\\)",
    "InvalidJwtError", "SessionNotFoundError", "BillingError", "WebhookValidationError",
    r"Unhandled Promise Rejection", "out of memory", "Memory limit of \\d+ MiB exceeded",
    "Container called exit\\(1\\)", "SIGTERM received", "Deadlock found",
    "too many connections", "relation \"\\w+\" does not exist", "TypeError: Cannot read prop",
    "RangeError: Maximum call stack", "SyntaxError: Unexpected token", "ERR_HTTP_HEADERS_SENT",
    "ShopifyAPIError", "RateLimitError", "TimeoutError: Navigation timeout",
    "FetchError: request to .* failed", "AbortError", "ERR_STREAM_PREMATURE_CLOSE",
    "ValidationError: ", "CastError", "UnauthorizedError", "ForbiddenError",
    "PaymentRequiredError", "NotFoundError: no route", "QueryFailedError",
    "Prisma Migrate could not create the shadow database", "Can't reach database server",
    "Timed out fetching a new connection from the connection pool", "Unique constraint failed",
    "Foreign key constraint failed", "The table `\\w+` does not exist",
    "The column `\\w+` does not exist", "Transaction already closed", "Raw query failed",
    "Inconsistent query result", "Engine is not yet connected",
]


def signal_list(n: int, resolve_after: str = "15m") -> list[dict[str, Any]]:
    if n > len(SIGNATURES):
        raise ValueError(f"at most {len(SIGNATURES)} signals")
    return [{"name": f"sig-{i:02d}" if i else "missing-session-table", "match": pattern,
             "resolve_after": resolve_after} for i, pattern in enumerate(SIGNATURES[:n])]


def write_config(path: Path, config: dict[str, Any]) -> Path:
    path.write_text(json.dumps(config, indent=2))  # JSON is YAML
    return path


class MonitorRun:
    """`monitor run` as a real subprocess on 127.0.0.1: its metrics, its RSS, a clean stop."""

    def __init__(self, config: Path, log: Path, *, ready_timeout: float = 60.0) -> None:
        import time
        import urllib.request

        self.port = free_port()
        self._urlopen = urllib.request.urlopen
        env = {**os.environ, "PORT": str(self.port), "MONITOR_HTTP_HOST": "127.0.0.1"}
        self._log = log.open("ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "monitor", "run", "--config",
                                      str(config)], stdout=self._log, stderr=subprocess.STDOUT,
                                     env=env, cwd=ROOT)
        deadline = time.monotonic() + ready_timeout
        while self.get("/readyz")[0] != 200:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"monitor run did not become ready; see {log}")
            time.sleep(0.1)

    def get(self, path: str) -> tuple[int, str]:
        import urllib.error

        try:
            with self._urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=5) as r:
                return int(r.status), r.read().decode()
        except urllib.error.HTTPError as e:
            return int(e.code), e.read().decode()
        except OSError:
            return 0, ""

    def metric(self, name: str, labels: str = "") -> float:
        """A sample's value from /metrics (`labels` as written, e.g. 'outcome="ok"')."""
        _, text = self.get("/metrics")
        want = f"{name}{{{labels}}} " if labels else f"{name} "
        for line in text.splitlines():
            if line.startswith(want):
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    @property
    def rss_kb(self) -> int | None:
        return rss_kb(self.proc.pid)

    def stop(self) -> int:
        import signal

        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return int(self.proc.returncode)


def frame_buckets(root: Any, buckets: Sequence[tuple[str, ...]]) -> dict[str, float]:
    """Inclusive seconds of each (label, function name[, end of its file's path]) in a
    pyinstrument call tree, plus the `total` of `run_cycle`: the first frame of that name on
    each path counts, once."""
    out: dict[str, float] = {"total": 0.0}

    def walk(frame: Any) -> None:
        name = frame.function or ""
        if name == "run_cycle" and not out["total"]:
            out["total"] = frame.time
        for label, fn, *where in buckets:
            if name == fn and (frame.file_path or "").endswith(where[0] if where else ""):
                out[label] = out.get(label, 0.0) + frame.time
                return
        for c in frame.children:
            walk(c)

    walk(root)
    return out
