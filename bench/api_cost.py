"""API cost: Cloud Logging requests per check, against the `gcloud logging read` a person scripts.

What is measured: one check cycle over a fixed volume (5,000 entries: 5 pages) for 1, 5, 20 and
50 signals, watching 1 service and 20 services of a project: the requests the cycle counts
(`stats.api_requests`) and the requests the emulator served (its own counter), and the cycle's
wall time (median of the runs).

Why that baseline: in the spector incident engineers checked by hand with one `gcloud logging
read` per signal and service; a scripted check does the same, so its cost is signals x services
calls per check. Those calls are run for real, over REST against the same emulator, with a
throwaway `CLOUDSDK_CONFIG` (`api_endpoint_overrides/logging`, `auth/disable_credentials`): the
emulator counts their requests, the wall clock their time. Each call costs about a second, mostly
gcloud's start-up, so at most `cap` calls are run per row (1 row, 1 call with --quick) and the rest
is extrapolated from their median (marked "est."). Target: the monitor's requests per check (the
pages of its one query, plus its follow-ups and probes) the same whatever the number of signals,
and equal to what the server served.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

from bench.common import (
    SIGNATURES,
    Options,
    Section,
    config_dict,
    fmt_s,
    median,
    table,
)
from bench.emulator_proc import EmulatorProcess

ONE = "bench-one"
MANY = "bench-many"
MANY_SERVICES = [f"svc-{i:02d}" for i in range(20)]
VOLUME = 5000


def emulator_spec() -> dict[str, Any]:
    incident_soon = {"first_deploy_after": 20}
    return {"rest": True, "datasets": [
        {"seed": 21, "project": ONE, "services": ["storefront"], "entries": VOLUME,
         "profile": incident_soon},
        {"seed": 22, "project": MANY, "services": MANY_SERVICES, "entries": VOLUME,
         "profile": {**incident_soon, "incident_services": 2}},
    ]}


class Gcloud:
    """`gcloud logging read` against the emulator's REST endpoint, in a throwaway config dir."""

    def __init__(self, rest_endpoint: str) -> None:
        self.dir = tempfile.mkdtemp(prefix="bench-gcloud-")
        self.env = {**os.environ, "CLOUDSDK_CONFIG": self.dir,
                    "CLOUDSDK_CORE_DISABLE_PROMPTS": "1"}
        for key, value in (("api_endpoint_overrides/logging", rest_endpoint.rstrip("/") + "/"),
                           ("auth/disable_credentials", "true"),
                           ("core/disable_usage_reporting", "true"),
                           ("component_manager/disable_update_check", "true")):
            subprocess.run(["gcloud", "config", "set", key, value], env=self.env,
                           capture_output=True, check=True, timeout=60)

    def read(self, filter_: str, project: str) -> float:
        started = time.perf_counter()
        proc = subprocess.run(["gcloud", "logging", "read", filter_, "--project", project,
                               "--format=json"], env=self.env, capture_output=True, text=True,
                              timeout=120)
        if proc.returncode != 0:
            raise RuntimeError(f"gcloud logging read failed: {proc.stderr[-500:]}")
        return time.perf_counter() - started

    def close(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


def _q(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def person_filter(service: str, pattern: str, start: str, end: str) -> str:
    """What an engineer types: one service, one signature, the same time range."""
    return (f'resource.type="cloud_run_revision" AND resource.labels.service_name={_q(service)} '
            f"AND timestamp>={_q(start)} AND timestamp<={_q(end)} AND textPayload=~{_q(pattern)}")


def measure(opts: Options, progress: Any = print) -> Section:
    import io

    from monitor import sources
    from monitor.check import run_cycle
    from monitor.config import parse_config
    from monitor.notify.console import ConsoleNotifier
    from monitor.store import open_store
    from monitor.times import parse_time

    section = Section("API cost: requests per check")
    signal_counts = [1, 5, 20, 50]
    cap = 1 if opts.quick else 10
    have_gcloud = shutil.which("gcloud") is not None
    rows = []
    met, equal = True, 0
    with EmulatorProcess(emulator_spec()) as emu:
        gcloud = Gcloud(emu.rest or "") if have_gcloud else None
        try:
            for ds, (project, services) in enumerate(((ONE, ["storefront"]),
                                                      (MANY, MANY_SERVICES))):
                first, last = emu.hello["first"][ds], emu.hello["last"][ds]
                now = parse_time(last) + timedelta(seconds=1)
                since = now - parse_time(first) + timedelta(seconds=1)
                base: float | None = None  # the requests of one signal, for this project
                for k in signal_counts:
                    times, counted, served, read, extra = [], [], [], [], []
                    for _ in range(opts.runs):
                        state = Path(tempfile.mkdtemp(prefix="bench-api-", dir=opts.workdir))
                        config = parse_config(config_dict(
                            project=project, services=services, endpoint=emu.grpc, signals=k,
                            state_url=f"sqlite:///{state}/state.db"), env={})
                        source = sources.build(config, config.units[0])
                        store = open_store(config.state.url)
                        emu.reset()
                        started = time.perf_counter()
                        result = run_cycle(config, store, source,
                                           ConsoleNotifier(io.StringIO()), unit=project,
                                           services=services, project=project, now=now,
                                           since=since)
                        times.append(time.perf_counter() - started)
                        served.append(emu.requests)
                        store.close()
                        if result.error:
                            raise RuntimeError(f"the cycle failed: {result.error}")
                        counted.append(result.stats.api_requests)
                        read.append(result.stats.entries_read)
                        extra.append(result.stats.follow_up_requests
                                     + result.stats.probe_requests)
                    pages = -(-read[0] // 1000)
                    # what the cycle counts is what the server served, and more signals cost
                    # no more requests: they are one alternation in the one query
                    base = median(counted) if base is None else base
                    ok = max(counted) == max(served) and median(counted) == base
                    met = met and ok
                    equal += ok
                    calls = k * len(services)
                    g_time, g_req, g_note = "not run", "n/a", ""
                    if gcloud is not None and (not opts.quick or (k == 1 and ds == 0)):
                        pairs = [(s, p) for p in SIGNATURES[:k] for s in services][:cap]
                        emu.reset()
                        per_call = [gcloud.read(person_filter(s, p, first, last), project)
                                    for s, p in pairs]
                        requests = emu.requests
                        exact = len(pairs) == calls
                        g_note = "" if exact else f" (est. from {len(pairs)} calls)"
                        total = sum(per_call) if exact else median(per_call) * calls
                        req_total = requests if exact else requests / len(pairs) * calls
                        g_time = fmt_s(total) + g_note
                        g_req = f"{req_total:,.0f}" + (" (est.)" if not exact else "")
                        ratio_req = f"{median(counted) / req_total:.3f}x"
                        ratio_time = f"{median(times) / total:.3f}x"
                    else:
                        ratio_req = ratio_time = "n/a"
                    progress(f"  api cost: {len(services)} service(s), {k} signal(s): "
                             f"{median(counted):.0f} requests, {median(times):.2f}s; gcloud "
                             f"{g_req} requests, {g_time}")
                    rows.append([len(services), k, f"{read[0]:,}", pages,
                                 f"{median(counted):.0f} ({median(extra):.0f})",
                                 f"{median(served):.0f}", fmt_s(median(times)), calls, g_req,
                                 g_time, ratio_req, ratio_time])
        finally:
            if gcloud is not None:
                gcloud.close()
    section.intro = (
        f"One check over {VOLUME:,} generated entries per project, against one `gcloud logging "
        "read` per signal and service (run for real over REST against the same emulator; "
        f"at most {cap} call(s) per row, the rest extrapolated from their median). Monitor "
        f"figures are medians of {opts.runs} run(s). Ratios are monitor / gcloud."
        + ("" if have_gcloud else " gcloud is not installed here: its columns are empty."))
    section.tables.append(table(
        ["services", "signals", "entries read", "pages of entries read",
         "monitor requests (stats; of them follow-ups and probes)",
         "requests served (emulator)", "monitor check time", "gcloud calls per check",
         "gcloud requests per check (baseline)", "gcloud time per check (baseline)",
         "requests ratio", "time ratio"], rows))
    section.targets.append(("monitor requests per check = those served, and the same for 1 to "
                            "50 signals, in every row",
                            f"equal in {equal} of {len(rows)} rows", met))
    section.notes.append(
        "Cloud Logging allows about 60 read requests a minute per project: the gcloud script "
        "with 20 signals x 20 services needs 400 calls per check, the monitor 5. With one "
        "signal on one service the hand-written read is cheaper in requests (1 against 5): it "
        "reads only the matching lines, and so knows nothing of the deploys, the migrations and "
        "the healthy traffic that the monitor's one read also brings (the evidence for the "
        "cause and the resolution).")
    return section
