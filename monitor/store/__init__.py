"""Stores: where the monitor keeps what it has concluded and what it still has to say."""

from __future__ import annotations

from monitor.store.base import CycleRecord, Queued, Store
from monitor.store.sqlite import SQLiteStore

__all__ = ["CycleRecord", "Queued", "SQLiteStore", "Store", "open_store"]


def open_store(url: str) -> SQLiteStore:
    """The store a `state.url` names."""
    if url.startswith("sqlite:///"):
        return SQLiteStore(url)
    raise ValueError("state.url: only sqlite:/// is supported by this version (PostgreSQL: #8)")
