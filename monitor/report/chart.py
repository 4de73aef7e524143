"""The incident's timeline chart: matching errors per time bucket, split by revision, as SVG.

Rules:
- Drawn with matplotlib's object API (`Figure` + the SVG canvas, never `pyplot`): no global
  figure state, so the HTTP threads of `monitor run` can draw at the same time; no display.
- The SVG is self-contained: text is drawn as paths (`svg.fonttype: path`), there is no font
  file, image or link to fetch. It is deterministic (fixed hash salt, no date), so the same
  store draws the same bytes.
- Names from the logs (revisions, migrations) reach the chart only as text matplotlib draws as
  glyphs; `$` is escaped so a name can never switch on mathtext.
- With a `file` source (a replayed export, local) the entries are read again and matched like
  the verification commands match them, in ONE pass for all the incidents of a write-up
  (`error_series_all`): an export may be a gigabyte, and a write-up of ten incidents must not
  read it ten times. Otherwise, or when the export cannot be read any more, the chart uses the
  per-bucket counts each incident keeps (at most 240 buckets, widening as the incident lasts).
"""

from __future__ import annotations

import io
import logging
import warnings
from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from monitor.config import Config
from monitor.correlate.model import IncidentKind
from monitor.entries import EntryKind, LogEntry
from monitor.evidence.claims import IncidentReport
from monitor.regex import compile_regex
from monitor.sources.base import SourceError
from monitor.window import ReadStats, Window

# Before the import, which warns while importing (a config directory it cannot write, the font
# cache): matplotlib's own state is not the user's business, only an error is.
logging.getLogger("matplotlib").setLevel(logging.ERROR)

import matplotlib  # noqa: E402
import matplotlib.dates as mdates_untyped  # noqa: E402
from matplotlib.backends.backend_svg import FigureCanvasSVG  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

mdates: Any = mdates_untyped  # its functions are untyped (mypy --strict)
Series = dict[str, list[datetime]]  # revision -> times of its matches
BUCKETS = [timedelta(minutes=m) for m in (1, 5, 15, 60, 180, 360, 720, 1440)]
MAX_BUCKETS = 80
COLORS = ["#d62728", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22"]
RC: Any = {"svg.fonttype": "path", "svg.hashsalt": "monitor-report", "font.size": 8}


def error_series(config: Config, rep: IncidentReport) -> Series | None:
    """The incident's matches by revision: exact from a local export, else from the per-bucket
    counts the incident keeps (each count placed at its bucket's start)."""
    return error_series_all(config, [rep])[0]


def error_series_all(config: Config, reps: Sequence[IncidentReport]) -> list[Series | None]:
    """`error_series` of each incident, the export (if any) read once for all of them."""
    found: list[Series | None] = [_from_buckets(rep) or None for rep in reps]
    if config.source.type != "file" or config.source.path is None:
        return found
    wanted = [(n, _Match(rep)) for n, rep in enumerate(reps) if rep.pattern]
    if not wanted:
        return found
    from monitor.sources.file import FileSource

    window = Window(min(m.start for _, m in wanted), max(m.end for _, m in wanted))
    exact: dict[int, Series] = {n: {} for n, _ in wanted}
    try:
        for entry in FileSource(config.source.path).read(window, ReadStats()):
            if entry.kind is not EntryKind.APP:
                continue
            for n, m in wanted:
                if m.matches(entry):
                    exact[n].setdefault(entry.revision or "(unknown)", []).append(
                        entry.timestamp)
    except (SourceError, OSError, ValueError):
        return found  # the export is gone or broken: the counts the incidents keep
    for n, series in exact.items():
        found[n] = series
    return found


class _Match:
    """What of the export an incident's chart counts: its signal's lines on its service."""

    def __init__(self, rep: IncidentReport) -> None:
        inc = rep.incident
        margin = timedelta(minutes=1) if inc.kind is IncidentKind.MIGRATION else timedelta()
        self.service = inc.service
        self.start = inc.first_seen - margin
        self.end = inc.last_seen + timedelta(microseconds=1)
        self.pattern = compile_regex(rep.pattern or "")  # RE2, as the signal matched it

    def matches(self, entry: LogEntry) -> bool:
        return (entry.service == self.service and self.start <= entry.timestamp <= self.end
                and self.pattern.search(entry.text) is not None)


def _from_buckets(rep: IncidentReport) -> Series:
    series: Series = {}
    for start, counts in rep.incident.buckets.items():
        at = datetime.fromtimestamp(int(start), UTC)
        for revision, n in counts.items():
            series.setdefault(revision, []).extend([at] * n)
    return series


def bucket_size(span: timedelta) -> timedelta:
    for size in BUCKETS:
        if span / size <= MAX_BUCKETS:
            return size
    return BUCKETS[-1]


def _label(text: str) -> str:
    return text.replace("$", r"\$")[:60]


def timeline_svg(rep: IncidentReport, series: Series | None) -> str:
    """The chart as an inline `<svg>` element (no XML prolog)."""
    inc = rep.incident
    start = min([inc.first_seen, *(e.at for e in rep.timeline)])
    end = max([inc.resolved_at or inc.last_seen, *(e.at for e in rep.timeline)])
    span = max(end - start, timedelta(minutes=10))
    size = bucket_size(span)
    # matplotlib's own warnings (a cache directory it cannot write, a glyph it lacks, identical
    # axis limits) are about the drawing, not the incident: they never reach the user's stderr.
    with matplotlib.rc_context(RC), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fig = Figure(figsize=(9, 3.2), dpi=100)
        FigureCanvasSVG(fig)
        ax = fig.add_subplot()
        revisions = sorted(series or inc.revisions, key=lambda r: (-(len(series[r]) if series
                                                                     else inc.revisions[r]), r))
        colors = {r: COLORS[i % len(COLORS)] for i, r in enumerate(revisions)}
        if series:
            origin = start
            bottoms: Counter[int] = Counter()
            width = size / timedelta(days=1)
            for rev in revisions:
                counts = Counter(int((t - origin) / size) for t in series[rev])
                xs = sorted(counts)
                ax.bar([mdates.date2num(origin + size * i) for i in xs], [counts[i] for i in xs],
                       width=width, bottom=[bottoms[i] for i in xs], align="edge",
                       color=colors[rev], label=_label(f"{rev} ({len(series[rev])})"))
                for i in xs:
                    bottoms[i] += counts[i]
            ax.set_ylabel(f"matches per {_duration(size)}")
        else:
            facts = {f.name: f for f in rep.revisions_hit}
            for y, rev in enumerate(revisions):
                f = facts.get(rev)
                lo = max(inc.first_seen, f.first_seen) if f and f.first_seen else inc.first_seen
                hi = min(inc.last_seen, f.last_seen) if f and f.last_seen else inc.last_seen
                ax.barh(y, max(mdates.date2num(hi) - mdates.date2num(lo), 0.01),
                        left=mdates.date2num(lo), color=colors[rev], height=0.5,
                        label=_label(f"{rev} ({inc.revisions[rev]})"))
            ax.set_yticks([])
            ax.set_ylabel("matches (totals; no per-bucket data)")
        for e in rep.timeline:
            if e.kind == "deploy":
                ax.axvline(mdates.date2num(e.at), color="#1f77b4", linestyle="--", linewidth=1)
            elif e.kind == "migration":
                failed = any(w in e.text for w in ("failed", "blocked", "error"))
                ax.axvline(mdates.date2num(e.at), color="#2ca02c" if not failed else "#000000",
                           linestyle=":", linewidth=1.2)
        ax.plot([], [], color="#1f77b4", linestyle="--", label="deploy")
        ax.plot([], [], color="#2ca02c", linestyle=":", label="migration applied")
        ax.plot([], [], color="#000000", linestyle=":", label="migration failed")
        if inc.resolved_at is not None:
            ax.axvspan(mdates.date2num(inc.last_seen), mdates.date2num(inc.resolved_at),
                       color="#2ca02c", alpha=0.12, label="quiet period")
        ax.set_xlim(mdates.date2num(start - span * 0.02), mdates.date2num(end + span * 0.02))
        locator = mdates.AutoDateLocator(maxticks=8)
        ax.xaxis.set_major_locator(locator)
        ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))
        ax.set_xlabel("UTC")
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
        fig.tight_layout()
        out = io.StringIO()
        fig.savefig(out, format="svg", metadata={"Date": None})
    svg = out.getvalue()
    return svg[svg.index("<svg"):]


def _duration(d: timedelta) -> str:
    minutes = int(d.total_seconds() // 60)
    return f"{minutes // 60}h" if minutes >= 60 and minutes % 60 == 0 else f"{minutes}m"
