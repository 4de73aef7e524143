"""Stores: where the monitor keeps what it has concluded and what it still has to say."""

from __future__ import annotations

from typing import TYPE_CHECKING

from monitor.store.base import CycleRecord, Store
from monitor.store.sqlite import SQLiteStore

if TYPE_CHECKING:
    from monitor.store.postgres import PostgresStore

__all__ = ["CycleRecord", "SQLiteStore", "Store", "open_store"]


def open_store(url: str) -> SQLiteStore | PostgresStore:
    """The store a `state.url` names: `sqlite:///PATH`, or `postgresql://...` (`postgres://`)."""
    if url.startswith("sqlite:///"):
        return SQLiteStore(url)
    if url.startswith(("postgresql://", "postgres://")):
        from monitor.store.postgres import PostgresStore  # psycopg only when it is used

        return PostgresStore(url)
    raise ValueError("state.url: use sqlite:///PATH or postgresql://USER@HOST/DB")
