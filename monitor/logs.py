"""The monitor's own logs: JSON lines Cloud Logging parses, or readable text on a terminal.

Rules: on Cloud Run, one JSON record per line written by google-cloud-logging's own
`StructuredLogHandler` (`severity`, `message`, `logging.googleapis.com/labels` with the logger as
`python_logger`, and the source location): the library that defines the format writes it. Every
line passes through the secret filter before it is written: known secret values (the Slack token,
the state URL's password) are replaced, and anything shaped like a secret is scrubbed, including
in tracebacks.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterable, Mapping
from typing import TextIO

from monitor.redact import hide

LABELS = {"component": "monitor"}


class SecretFilter(logging.Filter):
    """Redacts secrets from the message and the traceback of every record it passes."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        self.secrets = list(secrets)

    def redact(self, text: str) -> str:
        return hide(text, self.secrets)

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, Mapping):  # a structured payload: its text, kept a mapping
            record.msg = json.loads(self.redact(json.dumps(record.msg, default=str)))
        else:
            record.msg = self.redact(record.getMessage())
        record.args = None
        if record.exc_info and record.exc_info[0] is not None:
            record.exc_text = self.redact(logging.Formatter().formatException(record.exc_info))
            record.exc_info = None
        return True


def configure(level: str = "INFO", *, stream: TextIO | None = None, json_lines: bool | None = None,
              secrets: Iterable[str] = ()) -> None:
    """Route the root logger to `stream`: JSON unless it is a terminal (or as told)."""
    stream = stream or sys.stdout
    if json_lines is None:
        json_lines = not stream.isatty()
    handler: logging.Handler
    if json_lines:
        # Imported here: the library takes a second to import, and only `run` writes JSON.
        from google.cloud.logging_v2.handlers import StructuredLogHandler

        handler = StructuredLogHandler(labels=LABELS, stream=stream)  # type: ignore[no-untyped-call]
    else:
        handler = logging.StreamHandler(stream)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    handler.addFilter(SecretFilter(secrets))  # after the library's filter: before any output
    # The library writes one diagnostic entry through this logger with the handler attached to
    # it; propagating it to the root logger (the same handler) would write it twice.
    logging.getLogger("google.cloud.logging_v2.handlers.structured_log").propagate = False
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    # Chatty libraries: their INFO lines are noise at 3 a.m.
    for name in ("apscheduler", "urllib3", "google", "grpc"):
        logging.getLogger(name).setLevel(max(logging.WARNING, root.level))
