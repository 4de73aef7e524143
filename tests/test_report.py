"""`monitor report`: the spector write-up states the right facts; log text stays inert."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import pytest
from click.testing import CliRunner

from monitor.cli import main
from monitor.config import Config, load_config
from monitor.correlate.model import Transition, TransitionKind
from monitor.correlate.state import State
from monitor.report import build, report_markdown, summary_and_checklist
from monitor.report.markdown import block, code, md
from monitor.store import open_store

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
EXPORT = EXAMPLES / "spector-incident.json"
ERRORS = "spector:missing-session-table:20251204T210308Z"
MIGRATION = "spector:migration-failed:20251205T031014Z"


def demo_config(tmp_path: Path, export: Path = EXPORT) -> Path:
    """examples/config.yaml with absolute paths and its state in `tmp_path`, replayed once."""
    text = (EXAMPLES / "config.yaml").read_text()
    text = text.replace("path: spector-incident.json", f"path: {export}")
    text = text.replace("sqlite:///.monitor/demo.db", f"sqlite:///{tmp_path}/state.db")
    path = tmp_path / "config.yaml"
    path.write_text(text)
    result = CliRunner().invoke(main, ["once", "--config", str(path)])
    assert result.exit_code == 0, result.output
    return path


def load(path: Path) -> Config:
    return load_config(path)


LOWER = "20251204205052_map_session_table_to_lowercase"
FIX = "20251213003742_fix_session_table_uppercase"
HOSTILE = ("<script>alert(1)</script> <!channel> [x](https://evil) ``` `tick` | *b* "
           "postgres://u:hunter2@db/x")


@pytest.fixture(scope="module")
def config_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return demo_config(tmp_path_factory.mktemp("report"))


def report_of(config_path: Path, incident: str | None = None):
    config = load(config_path)
    store = open_store(config.state.url)
    try:
        return build(config, store, incident)
    finally:
        store.close()


def test_the_error_incident_write_up(config_path: Path) -> None:
    (rep,) = report_of(config_path, ERRORS).reports
    assert rep.introduced is not None and rep.introduced.name == "spector-00042-wex"
    assert rep.fixed is not None and rep.fixed.name == "spector-00044-mop"
    assert rep.fixed.ready_at == datetime(2025, 12, 13, 1, 6, 20, 418277, tzinfo=UTC)
    assert [(m.name, m.outcome) for m in rep.fixed.migrations] == [
        (LOWER, "rolled_back"), (LOWER, "applied"), (FIX, "applied")]
    assert rep.requests_failed == 157
    assert rep.summary.startswith("spector: MissingSessionTableError (missing-session-table), "
                                  "157 errors between 2025-12-04 21:03 UTC and 2025-12-13 "
                                  "01:07 UTC")
    assert "fixed by revision spector-00044-mop, resolved 2025-12-13 01:22 UTC." in rep.summary
    kinds = [e.kind for e in rep.timeline]
    assert kinds.count("deploy") == 3 and kinds.count("ready") == 3
    assert kinds.index("first_error") < kinds.index("last_error") < kinds.index("resolved")
    counts = {v.id: v.expect_count for v in rep.verifications}
    assert counts == {"errors": 157, "requests_failed": 157, "cause_migrations": None,
                      "fix_migrations": None, "quiet": 0, "requests_ok": 21}
    assert all(c.ok for c in rep.checklist)
    assert rep.checklist[0].text.startswith("no MissingSessionTableError since 2025-12-13 "
                                            "01:07 UTC")
    assert "21 successful app request(s)" in rep.checklist[0].text
    assert len(rep.notifications) == 22
    assert rep.notifications[0].action == "post_root"


def test_the_migration_incident_write_up(config_path: Path) -> None:
    (rep,) = report_of(config_path, MIGRATION).reports
    assert rep.pattern == "P3009|P3018"
    assert rep.fixed is not None and rep.fixed.name == "spector-00044-mop"
    assert {v.id for v in rep.verifications} == {"errors", "cause_migrations",
                                                 "fix_migrations", "quiet"}


def test_period_and_cli_formats(config_path: Path) -> None:
    runner = CliRunner()
    md_out = runner.invoke(main, ["report", "--config", str(config_path)])
    assert md_out.exit_code == 0, md_out.output
    assert md_out.output.count("\n## spector") == 2
    assert "### Verification" in md_out.output and "- [x] no MissingSessionTableError" in \
        md_out.output
    js = runner.invoke(main, ["report", ERRORS, "--config", str(config_path), "--format", "json"])
    doc = json.loads(js.output)
    (inc,) = doc["incidents"]
    assert inc["incident"]["id"] == ERRORS and inc["impact"]["errors"] == 157
    assert inc["fix"]["ready_at"] == "2025-12-13T01:06:20.418277Z"
    assert {v["id"] for v in inc["verification"]} >= {"errors", "quiet", "requests_ok"}
    none = runner.invoke(main, ["report", "--config", str(config_path), "--since", "1s"])
    assert "No incident in this period." in none.output  # both resolved > 1s before the last check
    missing = runner.invoke(main, ["report", "nope", "--config", str(config_path)])
    assert missing.exit_code == 2


def test_markdown_keeps_log_text_inert() -> None:
    assert "<script>" not in md(HOSTILE) and "&lt;script&gt;" in md(HOSTILE)
    assert "hunter2" not in md(HOSTILE) and "hunter2" not in block(HOSTILE)
    assert r"\[x\]" in md(HOSTILE)
    span = code("a`b``c")
    assert span.startswith("```") and span.endswith("```")
    fenced = block("x\n````\ny")
    assert fenced.startswith("`````\n")


def test_a_hostile_sample_in_the_markdown(config_path: Path) -> None:
    report = report_of(config_path, ERRORS)
    rep = report.reports[0]
    rep.incident.sample = HOSTILE
    text = report_markdown(report)
    assert "hunter2" not in text
    # the sample's own ``` cannot close the block around it
    assert "````\n<script>alert(1)</script> <!channel>" in text


def stored_state(config_path: Path) -> State:
    store = open_store(load(config_path).state.url)
    try:
        return store.load_state()
    finally:
        store.close()


def test_summary_and_checklist_for_slack(config_path: Path) -> None:
    state = stored_state(config_path)
    inc = replace(state.incidents[ERRORS], sample=HOSTILE, signal="x<!channel>")
    facts = tuple(state.service_revisions("spector"))
    t = Transition(TransitionKind.RESOLVED, inc, inc.seq, inc.resolved_at or inc.last_seen,
                   "resolved", revision_facts=facts)
    text = summary_and_checklist(t, pattern="MissingSessionTableError", project="spector-prod")
    assert len(text) <= 3000
    assert text.startswith("*Write-up*\nspector: MissingSessionTableError")
    assert ":white_check_mark: no MissingSessionTableError since 2025-12-13 01:07 UTC" in text
    assert "21 successful app request(s)" in text
    assert "fixed by revision spector-00044-mop" in text
    assert "<!channel>" not in text and "&lt;!channel&gt;" in text
    long = replace(inc, resolution_note="x" * 10000, revisions={f"r{i}" * 50: 1
                                                                 for i in range(200)})
    t2 = replace(t, incident=long)
    assert len(summary_and_checklist(t2)) <= 3000


def test_a_live_source_charts_the_buckets_the_incident_keeps(config_path: Path) -> None:
    """Without an export to re-read, the chart comes from the per-bucket counts in the store,
    and they agree with the export: same total per revision."""
    from monitor.report.chart import error_series

    config = load(config_path)
    (rep,) = report_of(config_path, ERRORS).reports
    exact = error_series(config, rep)
    live = config.model_copy(update={"source": config.source.model_copy(
        update={"type": "cloud_logging", "path": None})})
    from_buckets = error_series(live, rep)
    assert exact and from_buckets
    assert {r: len(ts) for r, ts in from_buckets.items()} == {r: len(ts) for r, ts in exact.items()}
    assert {r: len(ts) for r, ts in from_buckets.items()} == {"spector-00042-wex": 144,
                                                           "spector-00043-fiz": 13}


def test_the_slack_checklist_of_a_migration_incident_shows_the_checks_that_apply(
        config_path: Path) -> None:
    """Resolved by a run that succeeded, not by a quiet period: no red cross for a check it
    cannot build (the quiet period of an error signal), and the run that resolved it."""
    state = stored_state(config_path)
    inc = state.incidents[MIGRATION]
    t = Transition(TransitionKind.RESOLVED, inc, inc.seq, inc.resolved_at or inc.last_seen,
                   "resolved", revision_facts=tuple(state.service_revisions("spector")))
    text = summary_and_checklist(t, project="spector-prod")
    checks = text.split("*Checklist*\n", 1)[1].splitlines()
    assert ":x:" not in text
    assert checks[0] == (":white_check_mark: migrate deploy succeeded on spector-00044-mop at "
                         "2025-12-13 01:06 UTC")
    assert not any("quiet" in c or "no migration-failed since" in c for c in checks)


def test_matplotlib_warnings_never_reach_stderr(config_path: Path, tmp_path: Path) -> None:
    """An MPLCONFIGDIR it cannot use makes matplotlib warn while it is imported; a chart with a
    single point warns about identical axis limits. Neither is the user's business."""
    import os
    import subprocess
    import sys

    blocked = tmp_path / "a-file"
    blocked.write_text("")
    env = {**os.environ, "MPLCONFIGDIR": str(blocked / "mpl")}
    proc = subprocess.run([sys.executable, "-m", "monitor", "report", "--config",
                           str(config_path), "--format", "html"], capture_output=True,
                          text=True, env=env, check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    assert proc.stdout.count("<svg") >= 2


def test_an_estimated_count_is_said_so_in_the_write_up(config_path: Path) -> None:
    """A flood read as a sample (issue 16): the claim, its check and the timeline say the count
    is an estimate and give its bound; the check expects about that many, not exactly."""
    import copy

    from monitor.evidence.verify import verifications
    from monitor.report.facts import timeline

    (rep,) = report_of(config_path, ERRORS).reports
    sampled = copy.deepcopy(rep.incident)
    sampled.count_variance = 2400  # as ten matches read at one in sixteen leave it
    estimated = replace(rep, incident=sampled)
    [errors] = [v for v in verifications(estimated, True) if v.id == "errors"]
    assert (errors.expect_count, errors.expect_within) == (157, 97)
    assert errors.claim.startswith("~157 matches (estimated from a sample of the matches, "
                                   "\u00b197) of MissingSessionTableError")
    assert errors.expected_count() == "returns about 157 entries (\u00b197)"
    [failed] = [v for v in verifications(estimated, True) if v.id == "requests_failed"]
    assert failed.claim.startswith("~157 request(s) failed") and failed.expect_within == 97
    [exact] = [v for v in rep.verifications if v.id == "errors"]
    assert exact.expected_count() == "returns 157 entries" and exact.claim.startswith("157 ")
    last = next(e for e in timeline(estimated, []) if e.kind == "last_error")
    assert "(~157 (estimated" in last.text
