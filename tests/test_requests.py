"""classify.requests: the route a request served, and whether it was only a static asset.

The URLs are the shapes of tests/data/real/cloudrun/request_logs.json: Cloud Run's request log
gives `httpRequest.requestUrl` as a full URL with scheme and host.
"""

from __future__ import annotations

import re

import pytest

from monitor.classify.requests import DEFAULT_IGNORE_PATHS, AssetRule, path_of, route_of

HOST = "https://spector-408213337421.us-central1.run.app"


@pytest.mark.parametrize(("url", "route"), [
    (f"{HOST}/app", "/app"),
    (f"{HOST}/app?shop=x.myshopify.com&hmac=deadbeef", "/app"),  # a query string can hold tokens
    (f"{HOST}/orders/123/items", "/orders/:id/items"),
    (f"{HOST}/webhooks/9f3e1a2b7c/x", "/webhooks/:id/x"),
    (f"{HOST}/s/1b4e28ba-2fa1-11d2-883f-0016d3cca427", "/s/:id"),
    ("/auth/session-token#frag", "/auth/session-token"),
    (HOST, "/"),
    ("https://[bad/app", "/app"),  # a host urlsplit refuses: the path is still the path
    ("https://host?next=/app", "/"),  # a query right after the host: no path
])
def test_routes_fold_ids_and_drop_the_query(url, route):
    assert route_of(url) == route


def test_a_route_is_bounded():
    assert len(route_of("/" + "x" * 5000)) == 200
    assert route_of("/cafebabe/deadbeef1") == "/cafebabe/:id"


ASSETS = [f"{HOST}/assets/index-abc123.js", f"{HOST}/build/root-xyz.css",
          f"{HOST}/assets/index-abc123.js.map", f"{HOST}/fonts/inter-var.woff2",
          f"{HOST}/logo.SVG", f"{HOST}/favicon.ico", f"{HOST}/robots.txt",
          f"{HOST}/static/media/x.png?v=3", f"{HOST}/img/a.jpg#top", "/icon.ico"]
APP = [f"{HOST}/app", f"{HOST}/auth/session-token", f"{HOST}/app?file=x.js",
       f"{HOST}/api/jsonp", f"{HOST}/app/assets-report", f"{HOST}/", f"{HOST}/app.json",
       f"{HOST}/cssom"]


@pytest.mark.parametrize("url", ASSETS)
def test_static_assets_by_default(url):
    assert AssetRule().is_asset(url)


@pytest.mark.parametrize("url", APP)
def test_app_routes_are_not_assets(url):
    assert not AssetRule().is_asset(url)


def test_the_default_list_is_the_documented_one():
    assert DEFAULT_IGNORE_PATHS == (
        "/assets/", "/build/", "/static/", "favicon", "robots.txt",
        ".js", ".css", ".map", ".png", ".jpg", ".svg", ".ico", ".woff", ".woff2")


@pytest.mark.parametrize("rule", [AssetRule(), AssetRule(["/cdn/", ".webp"]),
                                  AssetRule([".js"]), AssetRule(["a.b(c)"])])
def test_the_query_pattern_decides_as_the_classifier_does(rule):
    pattern = rule.pattern()
    assert pattern is not None
    urls = [*ASSETS, *APP, f"{HOST}/cdn/x", f"{HOST}/p.webp", f"{HOST}/a.b(c)/x", "/a.bxc"]
    for url in urls:
        assert bool(re.search(pattern, url)) is rule.is_asset(url), url


def test_nothing_ignored_means_no_pattern_and_no_assets():
    assert AssetRule([]).pattern() is None
    assert not AssetRule([]).is_asset(f"{HOST}/favicon.ico")


def test_path_of_a_bare_path_and_a_full_url():
    assert path_of("/app?x=1") == "/app"
    assert path_of(f"{HOST}/app?x=1") == "/app"
