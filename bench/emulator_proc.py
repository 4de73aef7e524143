"""The Cloud Logging emulator in a process of its own, loaded with generated traffic.

Why a separate process: the monitor (or the bare client) under test then has the CPU and the
memory of its own process, as it has against Cloud Logging; the emulator's memory (a few KB per
entry) is never counted in the monitor's RSS, and its serving never competes for the GIL.

    python -m bench.emulator_proc '{"datasets": [{"seed": 7, "entries": 100000, ...}]}'

prints one JSON line (endpoints, entries loaded, load time), then answers commands on stdin, one
JSON line each: `requests` (ListLogEntries calls served since the last reset), `reset`,
`ts DATASET INDEX` (the timestamp of a dataset's INDEX-th entry in time order), `quit`.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import IO, Any

from bench.traffic import T0, Profile, Traffic


def make_profile(spec: dict[str, Any]) -> Profile:
    fields = dict(spec)
    for key in ("deploy_every", "incident_length", "first_deploy_after"):
        if key in fields:
            fields[key] = timedelta(seconds=float(fields[key]))
    return Profile(**fields)


def dataset(spec: dict[str, Any]) -> list[dict[str, Any]]:
    traffic = Traffic(int(spec.get("seed", 7)), project=spec.get("project", "bench-prod"),
                      services=tuple(spec.get("services", ["storefront"])),
                      start=datetime.fromisoformat(spec["start"]) if "start" in spec else T0,
                      profile=make_profile(spec.get("profile", {})))
    if "seconds" in spec:
        return traffic.advance(traffic.now + int(float(spec["seconds"]) * 1e9))
    return traffic.take(int(spec["entries"]))


def main(argv: list[str]) -> int:
    from monitor.emulator import Emulator, EntryStore

    spec = json.loads(argv[0])
    started = time.perf_counter()
    store = EntryStore()
    stamps: list[list[str]] = []
    for ds in spec["datasets"]:
        entries = dataset(ds)
        store.add(entries)
        stamps.append(sorted(e["timestamp"] for e in entries))
        del entries
    loaded = time.perf_counter() - started
    emulator = Emulator(store, rest=bool(spec.get("rest", False))).start()
    hello = {"grpc": emulator.grpc_endpoint,
             "rest": emulator.rest_endpoint if spec.get("rest") else None,
             "entries": len(store), "load_seconds": round(loaded, 2),
             "first": [s[0] if s else None for s in stamps],
             "last": [s[-1] if s else None for s in stamps]}
    print(json.dumps(hello), flush=True)
    for line in sys.stdin:
        cmd = line.split()
        if not cmd:
            continue
        if cmd[0] == "requests":
            answer: Any = emulator.requests
        elif cmd[0] == "reset":
            emulator.reset_counters()
            answer = 0
        elif cmd[0] == "ts":
            ds, index = int(cmd[1]), int(cmd[2])
            answer = stamps[ds][min(index, len(stamps[ds]) - 1)]
        elif cmd[0] == "quit":
            break
        else:
            answer = None
        print(json.dumps(answer), flush=True)
    emulator.stop()
    return 0


@dataclass
class EmulatorProcess:
    """The parent's handle: start it, ask it, stop it (always within a bounded time)."""

    spec: dict[str, Any]
    timeout: float = 900.0

    def __enter__(self) -> EmulatorProcess:
        self.proc = subprocess.Popen([sys.executable, "-m", "bench.emulator_proc",
                                      json.dumps(self.spec)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)
        self.hello: dict[str, Any] = json.loads(self._readline(self.timeout))
        self.grpc: str = self.hello["grpc"]
        self.rest: str | None = self.hello["rest"]
        return self

    def _readline(self, timeout: float) -> str:
        import selectors

        out: IO[str] | None = self.proc.stdout
        assert out is not None
        with selectors.DefaultSelector() as sel:
            sel.register(out, selectors.EVENT_READ)
            if not sel.select(timeout):
                self.proc.kill()
                raise TimeoutError(f"the emulator did not answer within {timeout:.0f}s")
        line = out.readline()
        if not line:
            raise RuntimeError(f"the emulator exited (code {self.proc.wait()})")
        return line

    def ask(self, command: str) -> Any:
        assert self.proc.stdin is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        return json.loads(self._readline(60))

    @property
    def requests(self) -> int:
        return int(self.ask("requests"))

    def reset(self) -> None:
        self.ask("reset")

    def __exit__(self, *exc: object) -> None:
        try:
            if self.proc.poll() is None and self.proc.stdin is not None:
                self.proc.stdin.write("quit\n")
                self.proc.stdin.close()
            self.proc.wait(timeout=15)
        except (subprocess.TimeoutExpired, BrokenPipeError, OSError):
            self.proc.kill()
            self.proc.wait()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
