"""A local Cloud Logging emulator: ListLogEntries over gRPC and REST from an in-memory store.

Tests drive the real Google client against it, and people use it to try the monitor without a
cloud account (`python -m monitor.emulator --load examples/spector-incident.json --shift-to-now`).
"""

from monitor.emulator.query import InvalidArgument, QueryError, compile_filter
from monitor.emulator.server import Emulator
from monitor.emulator.store import EntryStore

__all__ = ["Emulator", "EntryStore", "InvalidArgument", "QueryError", "compile_filter"]
