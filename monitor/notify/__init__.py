"""Notifiers: where messages go. `build` picks the one the config names."""

from __future__ import annotations

from typing import TextIO

from monitor.config import Config
from monitor.notify.message import Notifier


def build(config: Config, stream: TextIO, *, timeout: float | None = None) -> Notifier:
    """Slack's Web API when a token is configured, an Incoming Webhook when a webhook URL is
    (the config allows one or the other); otherwise the console (a demo, or a dry first deploy).
    `timeout` caps the configured request timeout (a shutdown cannot wait 10 s for one call)."""
    limit = config.slack.timeout.total_seconds()
    seconds = max(1, round(min(limit, timeout) if timeout is not None else limit))
    if config.slack.webhook_url:
        from monitor.notify.webhook import WebhookNotifier

        return WebhookNotifier(config.slack.webhook_url, timeout=seconds,
                               min_interval=config.slack.min_interval.total_seconds())
    if not config.slack.token:
        from monitor.notify.console import ConsoleNotifier

        return ConsoleNotifier(stream)
    from monitor.notify.slack import SlackNotifier

    return SlackNotifier(config.slack.token, base_url=config.slack.base_url, timeout=seconds,
                         min_interval=config.slack.min_interval.total_seconds())
