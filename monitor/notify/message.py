"""The Notifier protocol every delivery channel implements, and its one error type.

The messages themselves are values below both this package and the store (`monitor.messages`).
"""

from __future__ import annotations

from typing import Protocol

from monitor.messages import Message, Thread


class DeliveryError(Exception):
    """A failed send. `retryable` says whether the same message may be tried again later."""

    def __init__(self, message: str, *, retryable: bool, retry_after: float | None = None):
        super().__init__(message)
        self.retryable = retryable
        self.retry_after = retry_after


class Notifier(Protocol):
    """Delivers one message; returns the thread it now lives in (the root's for replies).

    `send` raises only DeliveryError (and ValueError for a reply without its root: a bug).
    `find` answers whether an earlier attempt whose outcome is unknown did arrive.
    `min_interval`: seconds between two messages to one channel (the channel's rate limit).
    `timeout`: seconds after which a send is given up; until then it may still land.
    """

    min_interval: float
    timeout: float

    def send(
        self, message: Message, root: Thread | None, linked: Thread | None = None
    ) -> Thread: ...

    def find(self, message: Message, root: Thread | None) -> Thread | None: ...
