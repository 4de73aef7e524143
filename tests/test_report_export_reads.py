"""A write-up over a `file` source reads the export at most once, however many incidents it has.

The charts of a replayed incident are drawn from the export itself (exact times); an export can be
a gigabyte, so `report --format html` and the status page read it in one pass for all their
incidents (`report.chart.error_series_all`), and not at all for the status page's index.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from monitor import web
from monitor.config import Config, load_config
from monitor.report import build
from monitor.report.chart import error_series
from monitor.report.html import report_html
from monitor.sources.file import FileSource
from monitor.store import open_store
from tests.test_report import demo_config

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
ERRORS = "spector:missing-session-table:20251204T210308Z"
MIGRATION = "spector:migration-failed:20251205T031014Z"


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory) -> Config:
    """The demo replayed once into its own store; the export is a copy that tests may remove."""
    tmp = tmp_path_factory.mktemp("reads")
    export = tmp / "export.json"
    export.write_bytes((EXAMPLES / "spector-incident.json").read_bytes())
    return load_config(demo_config(tmp, export))


@pytest.fixture
def opens(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Path]]:
    """Every time a FileSource opens its export."""
    opened: list[Path] = []
    real = FileSource._open

    def counting(self: FileSource) -> Any:
        opened.append(self.path)
        return real(self)

    monkeypatch.setattr(FileSource, "_open", counting)
    yield opened


def html_report(config: Config, incident: str | None = None) -> str:
    store = open_store(config.state.url)
    try:
        return report_html(build(config, store, incident), config)
    finally:
        store.close()


def charts(page: str) -> list[str]:
    return re.findall(r'<div class="chart">(.*?)</div>', page, re.S)


def test_a_write_up_of_several_incidents_reads_the_export_once(config, opens):
    page = html_report(config)
    assert page.count('<section class="incident"') == 2
    assert opens == [config.source.path]
    assert all("matches per" in svg for svg in charts(page))  # exact series, not the totals


def test_each_chart_is_the_one_its_incident_alone_would_draw(config):
    together = charts(html_report(config))
    alone = [charts(html_report(config, i))[0] for i in (ERRORS, MIGRATION)]
    assert together == alone


def test_the_status_page_reads_the_export_once_per_page_and_not_for_its_index(config, opens):
    now = datetime.now().astimezone()
    status, _ = web.respond(config, "/", now) or (0, "")
    assert status == 200 and opens == []
    status, page = web.respond(config, f"/incidents/{ERRORS}", now) or (0, "")
    assert status == 200 and "matches per" in page
    assert len(opens) == 1


def test_without_the_export_the_charts_use_the_buckets_the_incidents_keep(config, opens):
    store = open_store(config.state.url)
    try:
        rep = build(config, store, ERRORS).reports[0]
    finally:
        store.close()
    exact = error_series(config, rep)
    gone = config.model_copy(update={"source": config.source.model_copy(
        update={"path": Path(str(config.source.path) + ".missing")})})
    from_buckets = error_series(gone, rep)
    assert exact and from_buckets
    assert {r: len(t) for r, t in from_buckets.items()} == {r: len(t) for r, t in exact.items()}
    assert "matches per" in charts(html_report(gone, ERRORS))[0]
