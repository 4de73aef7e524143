"""A local Cloud Logging emulator: ListLogEntries over gRPC and REST from an in-memory store.

Tests drive the real Google client against it, and people use it to try the monitor without a
cloud account (`python -m monitor.emulator --load examples/spector-incident.json --shift-to-now`).
`SyntheticStore` serves traffic made on the fly from a spec instead of held entries: the
benchmarks' tens of millions of entries (bench/sweep.py).
"""

from monitor.emulator.query import InvalidArgument, QueryError, compile_filter
from monitor.emulator.server import Emulator, LogStore
from monitor.emulator.store import EntryStore
from monitor.emulator.synthetic import Deploy, Failures, SyntheticStore, TrafficSpec

__all__ = ["Deploy", "Emulator", "EntryStore", "Failures", "InvalidArgument", "LogStore",
           "QueryError", "SyntheticStore", "TrafficSpec", "compile_filter"]
