"""The monitor's own logs: JSON lines Cloud Logging parses, or readable text on a terminal.

Rules: one record per line; `severity` and `message` are the fields Cloud Logging reads from a
container's JSON output, and `logging.googleapis.com/labels` become the entry's labels (no trace
fields: the monitor serves no traced requests). Every line passes through the secret filter
before it is written: known secret values (the Slack token, the state URL's password) are
replaced, and anything shaped like a secret is scrubbed, including in tracebacks.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import TextIO

from monitor.redact import scrub

LABELS = {"component": "monitor"}


class SecretFilter(logging.Filter):
    """Redacts secrets from the message and the traceback of every record it passes."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        self.secrets = sorted({s for s in secrets if s and len(s) >= 4}, key=len, reverse=True)

    def redact(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, "***")
        return scrub(text)

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = self.redact(record.getMessage())
        record.args = None
        if record.exc_info and record.exc_info[0] is not None:
            record.exc_text = self.redact(logging.Formatter().formatException(record.exc_info))
            record.exc_info = None
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        if record.exc_text:
            message = f"{message}\n{record.exc_text}"
        return json.dumps({
            "severity": record.levelname if record.levelname != "WARN" else "WARNING",
            "message": message,
            "time": datetime.fromtimestamp(record.created, UTC).isoformat().replace("+00:00", "Z"),
            "logging.googleapis.com/labels": {**LABELS, "logger": record.name},
        }, ensure_ascii=False)


def configure(level: str = "INFO", *, stream: TextIO | None = None, json_lines: bool | None = None,
              secrets: Iterable[str] = ()) -> None:
    """Route the root logger to `stream`: JSON unless it is a terminal (or as told)."""
    stream = stream or sys.stdout
    if json_lines is None:
        json_lines = not stream.isatty()
    handler = logging.StreamHandler(stream)
    handler.addFilter(SecretFilter(secrets))
    handler.setFormatter(JsonFormatter() if json_lines else logging.Formatter(
        "%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    # Chatty libraries: their INFO lines are noise at 3 a.m.
    for name in ("apscheduler", "urllib3", "google", "grpc"):
        logging.getLogger(name).setLevel(max(logging.WARNING, root.level))
