"""Read windows and checkpoints: where each cycle reads from, and where the next one starts."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from monitor.window import (
    RECEIVE_OVERLAP,
    Checkpoint,
    ReadStats,
    Window,
    complete_until,
    next_checkpoint,
    plan_window,
)

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
LATE = timedelta(minutes=10)
M = timedelta(minutes=1)


class Live:
    live = True


class File:
    live = False


def plan(cp, *, since=None, lookback=timedelta(hours=1)):
    return plan_window(cp, NOW, since=since, default_lookback=lookback, max_lateness=LATE)


def test_first_read_looks_back_by_event_time():
    assert plan(None) == Window(start=NOW - timedelta(hours=1), end=NOW, received_before=NOW)
    assert plan(None, since=timedelta(hours=3)).start == NOW - timedelta(hours=3)
    assert plan(None, lookback=None).start is None  # a file replay reads everything


def test_later_reads_go_by_ingestion_time_with_an_overlap():
    cp = Checkpoint(until=NOW - M)
    assert plan(cp) == Window(start=NOW - M - LATE, end=NOW,
                              received_after=NOW - M - RECEIVE_OVERLAP, received_before=NOW)


def test_since_never_reaches_behind_the_dedupe_memory():
    cp = Checkpoint(until=NOW - M)
    assert plan(cp, since=timedelta(days=2)).start == NOW - M - LATE
    assert plan(cp, since=timedelta(minutes=5)).start == NOW - timedelta(minutes=5)


def test_a_cut_read_is_finished_before_moving_on():
    cp = Checkpoint(until=NOW - 10 * M, cursor=NOW - 12 * M, window_end=NOW - 5 * M)
    w = plan(cp)
    assert (w.start, w.end, w.received_before) == (NOW - 12 * M, NOW - 5 * M, NOW - 5 * M)
    assert w.received_after == NOW - 10 * M - RECEIVE_OVERLAP


def test_next_checkpoint():
    w = plan(Checkpoint(until=NOW - M))
    assert next_checkpoint(w, ReadStats(), NOW, None) == Checkpoint(until=NOW)
    cut = ReadStats(cut_at=NOW - 30 * M)
    assert next_checkpoint(w, cut, NOW, Checkpoint(until=NOW - M)) == Checkpoint(
        until=NOW - M, cursor=NOW - 30 * M, window_end=NOW)


def test_data_is_complete_only_up_to_max_lateness_behind_a_live_read():
    w = Window(start=None, end=NOW, received_before=NOW)
    assert complete_until(Live(), w, ReadStats(), NOW, LATE) == NOW - LATE
    assert complete_until(File(), w, ReadStats(), NOW, LATE) == NOW
    assert complete_until(Live(), w, ReadStats(cut_at=NOW - 60 * M), NOW, LATE) == NOW - 60 * M
