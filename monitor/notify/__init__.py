"""Notifiers: where messages go. `build` picks the one the config names."""

from __future__ import annotations

from typing import TextIO

from monitor.config import Config
from monitor.notify.message import Notifier


def build(config: Config, stream: TextIO, *, timeout: int = 15) -> Notifier:
    """Slack when a token is configured; otherwise the console (a demo, or a dry first deploy)."""
    if not config.slack.token:
        from monitor.notify.console import ConsoleNotifier

        return ConsoleNotifier(stream)
    from monitor.notify.slack import SlackNotifier

    return SlackNotifier(config.slack.token, base_url=config.slack.base_url, timeout=timeout,
                         min_interval=config.slack.min_interval.total_seconds())
