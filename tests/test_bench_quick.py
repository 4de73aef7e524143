"""The benchmarks still run: `python -m bench.run --quick` end to end, in a subprocess.

Not a timed test: it only checks that every benchmark ran against the emulator and the local
Slack server and that the report has every section with a figure in each table, so `bench/`
cannot rot while the code it measures changes. It takes about a minute.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SECTIONS = [
    "## Targets",
    "## Throughput: a whole cycle against the bare client",
    "## Memory: one cycle over a backlog",
    "## Memory: `monitor once` replaying an export",
    "## API cost: requests per check",
    "## Sweep: ",
    "## Memory: `monitor run` over",
    "## Detection latency: log entry to Slack",
    "## Cost of state:",
]
NUMBER = re.compile(r"\d")


def tables(text: str) -> list[list[str]]:
    """Every markdown table's body rows (header and separator dropped)."""
    found: list[list[str]] = []
    current: list[str] = []
    fenced = False
    for line in [*text.splitlines(), ""]:
        if line.startswith("```"):  # a profile's tree lines start with "|" too: not a table
            fenced = not fenced
            continue
        if not fenced and line.startswith("|"):
            current.append(line)
            continue
        if current:
            found.append(current[2:])
            current = []
    return found


def test_quick_benchmarks_run_and_report_every_section(tmp_path: Path) -> None:
    out = tmp_path / "BENCHMARKS.md"
    proc = subprocess.run([sys.executable, "-m", "bench.run", "--quick", "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=150)
    assert proc.returncode == 0, proc.stderr[-4000:]
    text = out.read_text()
    for heading in SECTIONS:
        assert heading in text, f"missing section {heading!r}"
    assert "FAILED" not in text
    assert "cores (os.cpu_count)" in text and "Python" in text
    assert "python -m bench.run --quick" in text
    found = tables(text)
    assert len(found) >= 10
    for rows in found:
        assert rows, "a table without rows"
        assert any(NUMBER.search(cell) for row in rows for cell in row.split("|")[1:-1]), rows
    # the headline figures are there and numeric
    assert re.search(r"\| [\d,]+ \| [\d.]+ s \| [\d,]+ \| [\d.]+ s \| [\d,]+ \| [\d.]+x \|", text)
    assert re.search(r"alert \(entry appended -> root message in Slack\) \| 5/5 \|", text)
