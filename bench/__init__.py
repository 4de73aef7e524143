"""Benchmarks of the monitor against its own local Cloud Logging emulator and Slack server.

Not tests: `python -m bench.run [--quick] [--out BENCHMARKS.md]` runs them all and rewrites the
report; `tests/test_bench_quick.py` only checks that the quick mode still runs.
"""
