"""`monitor once` replaying a big export needs about the memory of a small one.

A small version of the benchmark (bench/memory.py `measure_replay`, 10,000 vs 1,000,000 entries,
target 1.25x): 2,000 vs 50,000 generated entries, newest first as gcloud writes them, each
replayed by `monitor once` in a child process whose peak RSS `wait4` reports. The bound is loose
(the machine is shared): folding the whole file at once, as `once` did before, peaked at 52 MB
and 271 MB (5.2x) on this pair; page by page, 55 MB and 75 MB (1.37x: what still grows is the
dedupe keys the commit writes, those of the last 2 x `poll.max_lateness` of entries, 2,000 here
and 46,000 there, an incident's stack traces being the export's last minutes). About 15 seconds.
"""

from __future__ import annotations

from pathlib import Path

from bench.memory import once_peak, replay_config, write_export


def test_a_replay_50_times_bigger_peaks_within_1_6x(tmp_path: Path) -> None:
    peaks = {}
    for size in (2_000, 50_000):
        run = tmp_path / str(size)
        run.mkdir()
        export = write_export(run / "export.json", size)
        result = once_peak(replay_config(run / "config.yaml", export, run / "state.db"))
        assert result["entries"] == size
        peaks[size] = result["maxrss_kb"]
    assert peaks[50_000] < 1.6 * peaks[2_000], peaks
