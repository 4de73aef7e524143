"""Sources: where log entries come from. `build` picks the one the config names, per unit."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import timedelta

from monitor.classify import TOOL_HEADERS, TOOL_LINES
from monitor.classify.requests import AssetRule
from monitor.config import Config, Target
from monitor.queries import Selection
from monitor.sources.base import Source, SourceError
from monitor.sources.budget import RateLimiter

__all__ = ["Source", "SourceError", "build", "selection"]


def selection(config: Config) -> Selection:
    """What a cycle's query selects for `config`: its signals' patterns and the migration
    tool's output (RE2, as the server's `=~` is)."""
    return Selection(signals=tuple((s.name, s.match.pattern) for s in config.signals),
                     tool=TOOL_LINES if config.migrations.tool == "prisma" else None)


def build(config: Config, unit: Target, limiter: RateLimiter | None = None,
          sleep: Callable[[float], object] = time.sleep) -> Source:
    """The source for one unit of work. Pass the same `limiter` to every cycle of a process;
    `sleep` may be an Event's `wait`, so a shutdown interrupts a retry's backoff."""
    if config.source.type == "file":
        from monitor.sources.file import FileSource

        assert config.source.path is not None
        return FileSource(config.source.path)
    from monitor.sources.cloud_logging import CloudLoggingSource

    assert unit.project is not None  # the config requires it for cloud_logging
    hints = TOOL_HEADERS if config.migrations.tool == "prisma" else None
    return CloudLoggingSource(
        selection=selection(config) if config.source.select else None,
        follow_hints=hints,
        asset_pattern=AssetRule(config.evidence.ignore_paths).pattern(),
        project=unit.project,
        services=unit.services,
        transport=config.source.transport,
        api_endpoint=config.source.api_endpoint,
        request_sample=config.source.request_sample,
        max_pages=config.source.max_pages_per_cycle,
        limiter=limiter or RateLimiter(config.source.max_requests_per_minute, sleep=sleep),
        sleep=sleep,
        timeout=config.source.timeout,
        # Retries must end well inside the cycle: the next one starts an interval later.
        retry_for=max(config.poll.interval / 2, timedelta(seconds=5)),
    )
