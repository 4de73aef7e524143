"""`python -m monitor.emulator`: a local Cloud Logging read API until SIGINT or SIGTERM.

    python -m monitor.emulator --load examples/spector-incident.json --shift-to-now

prints the endpoints; point the monitor's source at the gRPC one (`api_endpoint`) or gcloud at
the REST one. `--shift-to-now` moves every entry by one delta so the newest is now, for demos on
real time.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from datetime import UTC, datetime
from types import FrameType

from monitor.emulator.server import Emulator
from monitor.emulator.store import EntryStore


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m monitor.emulator",
                                     description="A local Cloud Logging emulator (127.0.0.1).")
    parser.add_argument("--grpc-port", type=int, default=8089)
    parser.add_argument("--rest-port", type=int, default=8090, help="0: any free port")
    parser.add_argument("--load", metavar="FILE", nargs="+", default=[],
                        help="gcloud JSON exports or JSON lines, optionally gzipped")
    parser.add_argument("--shift-to-now", action="store_true",
                        help="move all timestamps so that the newest entry is now")
    args = parser.parse_args(argv)
    store = EntryStore()
    for path in args.load:
        try:
            count = store.load(path)
        except (OSError, ValueError) as exc:
            print(f"monitor.emulator: cannot load {path}: {exc}", file=sys.stderr)
            return 2
        print(f"loaded {count} entries from {path}", flush=True)
    if args.shift_to_now:
        delta_ns = store.shift_to(datetime.now(UTC))
        print(f"shifted all entries by {delta_ns / 3.6e12:+.2f} h", flush=True)
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        emulator = Emulator(store, grpc_port=args.grpc_port, rest_port=args.rest_port).start()
    except (OSError, RuntimeError) as exc:
        print(f"monitor.emulator: cannot listen: {exc}", file=sys.stderr)
        return 2
    print(f"gRPC: {emulator.grpc_endpoint}\nREST: {emulator.rest_endpoint}\n"
          f"{len(store)} entries; Ctrl-C to stop", flush=True)
    try:
        while not stop.wait(0.5):
            pass
    finally:
        emulator.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
