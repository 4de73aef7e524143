"""What a request log says: which route was served, and whether it was only a static asset.

Rules: pure. A request's route is its URL's path (never its query string, which can carry tokens)
with id-like segments folded to `:id`, so `/orders/123` and `/orders/456` are one route. A static
asset never shows that the failing work works again: a browser loads an error page's own scripts,
styles and icons with 200s while every real request fails. Which paths are assets is
configuration (`evidence.ignore_paths`): an entry starting with `.` is an extension the path ends
with, any other a text the path contains.

The same rule is written as one RE2 pattern over the whole `requestUrl` (`asset_pattern`), so a
`gcloud logging read` filter that leaves assets out selects exactly what the classifier leaves out.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

# Scripts, styles, maps, images and fonts, and the folders bundlers put them in (Remix's /build/,
# Vite's /assets/, CRA's /static/), plus what browsers and crawlers ask for on their own.
DEFAULT_IGNORE_PATHS: tuple[str, ...] = (
    "/assets/", "/build/", "/static/", "favicon", "robots.txt",
    ".js", ".css", ".map", ".png", ".jpg", ".svg", ".ico", ".woff", ".woff2",
)

_ID = re.compile(r"\d+|[0-9a-fA-F]{8,}|[0-9a-fA-F]{8}(?:-[0-9a-fA-F]{4}){3}-[0-9a-fA-F]{12}")
MAX_ROUTE = 200  # characters kept of a route: a path is untrusted and may be long


def path_of(url: str) -> str:
    """The path of a full URL (`https://host/app?x=1`) or of a bare path (`/app?x=1`)."""
    m = _URL.match(url)
    return (m[1] if m else "") or "/"


# The scheme and host (up to the first / ? #), then the path (up to ? #): what `pattern()` reads.
_URL = re.compile(r"(?:[a-zA-Z][a-zA-Z0-9+.-]*://[^/?#]*)?([^?#]*)")


def route_of(url: str) -> str:
    """`/orders/123/items?page=2` -> `/orders/:id/items`."""
    parts = path_of(url).split("/")
    return "/".join(":id" if _is_id(p) else p for p in parts)[:MAX_ROUTE]


def _is_id(segment: str) -> bool:
    """A number, a uuid, or a long hex string with a digit (`cafebabe` may be a word)."""
    return _DIGIT.search(segment) is not None and _ID.fullmatch(segment) is not None


_DIGIT = re.compile(r"\d")
MAX_CACHED = 4096  # distinct paths remembered per rule: a service's routes, not its traffic


class AssetRule:
    """Decides whether a request's URL is a static asset, by `evidence.ignore_paths`."""

    def __init__(self, ignore_paths: Sequence[str] = DEFAULT_IGNORE_PATHS) -> None:
        self.ignore_paths = tuple(ignore_paths)
        self._suffixes = tuple(p.lower() for p in self.ignore_paths if p.startswith("."))
        self._parts = tuple(p.lower() for p in self.ignore_paths if not p.startswith("."))
        self._seen: dict[str, tuple[str, bool]] = {}

    def is_asset(self, url: str) -> bool:
        return self._is_asset_path(path_of(url))

    def _is_asset_path(self, path: str) -> bool:
        path = path.lower()
        return path.endswith(self._suffixes) or any(p in path for p in self._parts)

    def describe(self, url: str) -> tuple[str, bool]:
        """`(route_of(url), is_asset(url))`, remembered per path: every request log comes here,
        and most of a service's requests are for a few paths."""
        path = path_of(url)
        known = self._seen.get(path)
        if known is None:
            if len(self._seen) >= MAX_CACHED:
                self._seen.clear()
            known = self._seen[path] = (route_of(path), self._is_asset_path(path))
        return known

    def pattern(self) -> str | None:
        """The same rule as an RE2 pattern over a `requestUrl`; None when nothing is ignored.

        The scheme and host are consumed first and `[^?#]*` stops at the query string, so every
        test looks at the path alone, as `is_asset` does.
        """
        host = "^(?:[a-z][a-z0-9+.-]*://[^/?#]*)?"
        path = host + "/[^?#]*"  # at least the path's first "/": a needle never meets the host
        alternatives = []
        rooted = [p for p in self._parts if p.startswith("/")]  # may begin at that first "/"
        if rooted:
            alternatives.append(host + "(?:/[^?#]*)?(?:" + "|".join(map(_re2_escape, rooted))
                                + ")")
        if inner := [p for p in self._parts if not p.startswith("/")]:
            alternatives.append(path + "(?:" + "|".join(map(_re2_escape, inner)) + ")")
        if self._suffixes:
            alternatives.append(path + "(?:" + "|".join(map(_re2_escape, self._suffixes))
                                + ")(?:[?#]|$)")
        return f"(?i){'|'.join(alternatives)}" if alternatives else None


def _re2_escape(text: str) -> str:
    """`re.escape` escapes `/` and `-` too, which RE2 reads the same; only specials need it."""
    return re.sub(r"([\\.^$|?*+()\[\]{}])", r"\\\1", text)
