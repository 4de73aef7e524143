"""The status page and the HTML write-up in a real headless browser (Debian's chromium).

`monitor run`'s own HTTP handler serves the demo's store; the browser must show the incident,
the chart (an inline <svg>) and hostile log text as text (never as markup), with no script error
and nothing fetched from anywhere but the page itself. Skipped when chromium or playwright is
missing, except in CI (`CI` set), where that is a failure.

`MONITOR_DOCS=1` also writes docs/status-page.png and docs/report-example.md from the demo.
"""

from __future__ import annotations

import io
import os
import re
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from click.testing import CliRunner

from monitor import notify
from monitor.cli import main
from monitor.service import Service
from monitor.store import open_store
from monitor.store.base import CycleRecord
from tests.test_report import ERRORS, demo_config, load

CHROMIUM = Path("/usr/bin/chromium")
DOCS = Path(__file__).resolve().parents[2] / "docs"
HOSTILE = "<script>alert('pwned')</script><img src=x onerror=alert(2)> &amp; postgres://u:hunter2@db/x"
CLOCK = datetime(2025, 12, 13, 2, 30, tzinfo=UTC)


def _need(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(reason)
    pytest.skip(reason)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _need("playwright is not installed (pip install playwright; never `playwright install`)")
    if not CHROMIUM.exists():
        _need(f"{CHROMIUM} is missing (apt-get install -y chromium)")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        yield b
        b.close()


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    path = demo_config(tmp_path_factory.mktemp("status-page"))
    config = load(path)
    store = open_store(config.state.url)
    state = store.load_state()
    state.incidents[ERRORS].sample = HOSTILE
    store.commit_cycle(state, CycleRecord("hostile", None, {}, None, []))
    service = Service(config, store, notify.build(config, io.StringIO()), clock=lambda: CLOCK)
    http = service.listen("127.0.0.1", 0)  # the server `monitor run` serves with
    try:
        if os.environ.get("MONITOR_DOCS"):
            clean = load(demo_config(tmp_path_factory.mktemp("docs")))
            out = CliRunner().invoke(main, ["report", "--config", str(clean_path(clean))])
            assert out.exit_code == 0, out.output
            (DOCS / "report-example.md").write_text(out.output.replace(
                str(tmp_path_factory.getbasetemp()), "."))
        yield f"http://127.0.0.1:{http.server_address[1]}"
    finally:
        http.shutdown()
        http.server_close()
        store.close()


def clean_path(config: Any) -> Path:
    return Path(config.state.url.removeprefix("sqlite:///")).parent / "config.yaml"


def open_page(browser: Any, url: str) -> tuple[Any, list[str], list[str]]:
    page = browser.new_page(viewport={"width": 1200, "height": 900})
    errors: list[str] = []
    requests: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("dialog", lambda dialog: (errors.append(f"dialog: {dialog.message}"),
                                      dialog.dismiss()))
    page.on("request", lambda req: requests.append(req.url))
    response = page.goto(url)
    assert response is not None and response.status == 200
    page.wait_for_load_state("load")
    return page, errors, requests


def test_the_status_page(browser: Any, site: str) -> None:
    page, errors, requests = open_page(browser, site + "/")
    text = page.inner_text("body")
    assert "0 incident(s) open" in text
    assert ERRORS in text and "spector-00044-mop" in text
    assert "20251213003742_fix_session_table_uppercase" in text
    assert "read up to 2025-12-13 02:14:25 UTC" in text
    assert page.locator("script").count() == 0
    assert errors == [] and requests == [site + "/"]
    if os.environ.get("MONITOR_DOCS"):
        page.screenshot(path=str(DOCS / "status-page.png"), full_page=True)
    page.click(f"a[href='/incidents/{quote(ERRORS, safe='')}']")
    page.wait_for_load_state("load")
    assert "Incident write-up" in page.inner_text("h1")


def test_the_incident_report(browser: Any, site: str) -> None:
    url = f"{site}/incidents/{quote(ERRORS, safe='')}"
    page, errors, requests = open_page(browser, url)
    text = page.inner_text("body")
    assert "157 errors between 2025-12-04 21:03 UTC and 2025-12-13 01:07 UTC" in text
    assert page.locator(".chart svg").count() == 1
    box = page.locator(".chart svg").bounding_box()
    assert box is not None and box["width"] > 300 and box["height"] > 100
    # hostile text is shown as text, scrubbed, and never became an element
    assert "<script>alert('pwned')</script><img src=x onerror=alert(2)> &amp;" in text
    assert "hunter2" not in page.content()
    assert page.locator("script").count() == 0 and page.locator("img").count() == 0
    assert re.search(r"gcloud logging read .*--project=spector-prod --format=json", text)
    assert errors == [] and requests == [url]


def test_unknown_incident_is_404(browser: Any, site: str) -> None:
    page = browser.new_page()
    response = page.goto(site + "/incidents/%3Cb%3Enope")
    assert response is not None and response.status == 404
    assert "<b>nope" in page.inner_text("body")
