"""config.yaml: validation names the key and the problem; durations; interpolation; masking."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from monitor.config import ConfigError, load_config, masked, parse_config
from monitor.times import format_duration, parse_duration

ROOT = Path(__file__).resolve().parents[1]

MINIMAL = {"services": ["spector"], "source": {"type": "file", "path": "x.json"},
           "signals": [{"name": "missing-session-table", "match": "MissingSessionTableError"}]}


def with_(**changes):
    data = {k: (dict(v) if isinstance(v, dict) else list(v)) for k, v in MINIMAL.items()}
    data["signals"] = [dict(MINIMAL["signals"][0])]
    for path, value in changes.items():
        node = data
        *parents, last = path.split("__")
        for p in parents:
            node = node[int(p)] if p.isdigit() else node.setdefault(p, {})
        node[int(last) if last.isdigit() else last] = value
    return data


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30s", 30), ("5m", 300), ("2h", 7200), ("1d", 86400), ("1h30m", 5400), ("250ms", 0.25),
     (45, 45), (" 10 m ", 600)],
)
def test_durations(text, seconds):
    assert parse_duration(text) == timedelta(seconds=seconds)


@pytest.mark.parametrize("bad", ["five minutes", "5x", "", "m5", "1h3", -3, True, None])
def test_bad_durations(bad):
    with pytest.raises(ValueError, match="invalid duration"):
        parse_duration(bad)


def test_duration_round_trip():
    assert format_duration(timedelta(minutes=90)) == "1h30m"
    assert format_duration(timedelta(0)) == "0s"


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"signals__0__window": "five minutes"},
         "signals[0].window: invalid duration 'five minutes'"),
        ({"signals__0__match": "(unclosed"}, "signals[0].match: invalid regular expression"),
        ({"signals__0__open_after": 0}, "signals[0].open_after: Input should be greater than"),
        ({"signals__0__severity": "urgent"}, "signals[0].severity: Input should be"),
        ({"poll__intervall": "1m"}, "poll.intervall: unknown key"),
        ({"slak": {}}, "slak: unknown key"),
        ({"source__type": "bigquery"}, "source.type: Input should be 'cloud_logging' or 'file'"),
        ({"state__url": "mysql://x"}, "state.url: must start with sqlite:/// or postgresql://"),
        ({"source": {"type": "file"}}, "source.path: required when source.type is 'file'"),
        ({"source": {"type": "cloud_logging"}}, "project: required"),
        ({"services": []}, "services: at least one service"),
        ({"signals": []}, "signals: List should have at least 1 item"),
        ({"evidence": {"ignore_paths": [""]}}, "evidence.ignore_paths[0]: String should have at"),
        ({"evidence": {"ignore_path": []}}, "evidence.ignore_path: unknown key"),
    ],
)
def test_errors_name_the_key_and_the_problem(changes, message):
    with pytest.raises(ConfigError) as exc:
        parse_config(with_(**changes), env={})
    assert message in str(exc.value)


def test_duplicate_signal_names_are_rejected():
    data = with_()
    data["signals"].append(dict(data["signals"][0]))
    with pytest.raises(ConfigError, match="duplicate signal name 'missing-session-table'"):
        parse_config(data, env={})


def test_interpolation_with_defaults_and_missing_variables():
    data = with_(project="${PROJECT}", slack={"token": "${TOKEN:-}", "channel": "${CH:-#ops}"})
    config = parse_config(data, env={"PROJECT": "spector-prod"})
    assert config.project == "spector-prod"
    assert config.slack.token == ""
    assert config.slack.channel == "#ops"
    with pytest.raises(ConfigError, match=r"project: environment variable PROJECT is not set"):
        parse_config(data, env={})


def test_regex_is_compiled_at_load():
    config = parse_config(with_(signals__0__match="Missing(Session|User)TableError"), env={})
    assert config.signals[0].match.search("x MissingUserTableError y")


def test_secrets_are_masked():
    data = with_(slack={"token": "xoxb-123-secret"},
                 state={"url": "postgresql://monitor:hunter2@db.internal/monitor"})
    shown = str(masked(parse_config(data, env={})))
    assert "xoxb-123-secret" not in shown and "hunter2" not in shown
    assert "postgresql://monitor:***@db.internal/monitor" in shown


def test_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="cannot read config"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("services: [spector\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    top = tmp_path / "list.yaml"
    top.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_config(top)


def test_relative_source_path_is_taken_from_the_config_folder(tmp_path):
    (tmp_path / "c.yaml").write_text(
        "services: [spector]\nsource: {type: file, path: logs.json}\n"
        "signals: [{name: s, match: x}]\n")
    assert load_config(tmp_path / "c.yaml").source.path == tmp_path / "logs.json"


def test_shipped_config_is_valid_with_the_documented_environment():
    config = load_config(ROOT / "config.yaml", env={"GOOGLE_CLOUD_PROJECT": "spector-prod"})
    assert [s for unit in config.units for s in unit.services] == ["spector"]
    (signal,) = config.signals
    assert signal.match.search("MissingSessionTableError: Prisma session table does not exist")
    assert config.migrations.tool == "prisma"


MINUTE = timedelta(minutes=1)


def two_targets(first: str = "spector-prod", second: str = "spector-staging") -> dict:
    data = with_()
    del data["services"]
    data["targets"] = [{"project": first, "services": ["spector"]},
                       {"project": second, "services": ["spector", "worker"]}]
    return data


def test_a_lease_shorter_than_two_intervals_is_an_error():
    with pytest.raises(ConfigError, match=r"state\.lease: 59s is less than twice poll\.interval"):
        parse_config(with_(poll__interval="30s", state__lease="59s"), env={})
    assert parse_config(with_(poll__interval="30s", state__lease="1m"), env={}).lease == MINUTE


def test_the_default_lease_is_three_intervals_and_at_least_30_seconds():
    assert parse_config(with_(), env={}).lease == timedelta(minutes=3)  # interval 60s
    assert parse_config(with_(poll__interval="5s"), env={}).lease == timedelta(seconds=30)
    assert parse_config(with_(poll__interval="20s"), env={}).lease == timedelta(seconds=60)


def test_a_project_is_one_target():
    with pytest.raises(ConfigError, match=r"targets\[1\]\.project: 'spector-prod' is already"):
        parse_config(two_targets("spector-prod", "spector-prod"), env={})


def test_each_target_is_a_unit_named_after_its_project():
    config = parse_config(two_targets(), env={})
    assert config.unit_names == ["spector-prod", "spector-staging"]
    assert [s for unit in config.units for s in unit.services] == ["spector", "spector", "worker"]
    assert parse_config(with_(), env={}).unit_names == ["default"]


def test_evidence_ignores_static_assets_by_default_and_can_be_set():
    from monitor.classify.requests import DEFAULT_IGNORE_PATHS

    assert parse_config(MINIMAL, env={}).evidence.ignore_paths == list(DEFAULT_IGNORE_PATHS)
    custom = parse_config(with_(evidence={"ignore_paths": ["/cdn/", ".webp"]}), env={})
    assert custom.evidence.ignore_paths == ["/cdn/", ".webp"]
    assert parse_config(with_(evidence={"ignore_paths": []}), env={}).evidence.ignore_paths == []


def test_the_shipped_signal_catches_the_class_name_and_the_message_text():
    config = load_config(ROOT / "config.yaml", env={"GOOGLE_CLOUD_PROJECT": "spector-prod"})
    (signal,) = config.signals
    for text in ("MissingSessionTableError: Prisma session table does not exist.",
                 "Error: Prisma session table does not exist. This could happen for a few "
                 "reasons, see https://github.com/Shopify/shopify-app-js/tree/main/packages/apps/"
                 "session-storage/shopify-app-session-storage-prisma#troubleshooting",
                 "MissingSessionTableError"):
        assert signal.match.search(text), text
    assert not signal.match.search("Error: Prisma Client could not connect")


def test_signal_patterns_compile_with_re2_and_name_the_key_when_they_cannot():
    from monitor.regex import Regex

    config = parse_config(MINIMAL, env={})
    assert isinstance(config.signals[0].match, Regex)
    for pattern, why in (("(?=Missing)Session", "invalid perl operator: (?="),
                         (r"(a)\1", "invalid escape sequence: \\1")):
        with pytest.raises(ConfigError) as exc:
            parse_config(with_(signals__0__match=pattern), env={})
        assert f"signals[0].match: invalid regular expression {pattern!r}: RE2 cannot compile " \
               f"it: {why}" in str(exc.value)


def test_a_pattern_that_backtracks_forever_in_python_re_runs_in_linear_time(tmp_path):
    """`(a+)+$` against 40 a's and a `!` takes Python's `re` longer than the age of the universe;
    a check runs it over every line of untrusted text. In a subprocess, so a regression fails
    the test instead of hanging the suite."""
    import subprocess
    import sys

    code = ("from monitor.config import parse_config\n"
            "c = parse_config({'services': ['s'], 'source': {'type': 'file', 'path': 'x'},"
            " 'signals': [{'name': 'x', 'match': '(a+)+$'}]}, env={})\n"
            "print(c.signals[0].match.search('a' * 40 + '!'))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, cwd=ROOT)
    assert out.returncode == 0 and out.stdout.strip() == "None", out.stderr
    assert out.stderr == ""  # RE2 logs nothing of its own


@pytest.mark.parametrize(("changes", "message"), [
    ({"poll__interval": "1000000d"}, "poll.interval: invalid duration '1000000d': "
                                     "at most 3650d"),
    ({"signals__0__window": "99999999999999999d"}, "signals[0].window: invalid "
                                                   "duration '99999999999999999d': at most"),
    ({"poll__interval": "0s"}, "poll.interval: invalid duration '0s': must be "
                               "more than 0s"),
    ({"signals__0__window": 0}, "signals[0].window: invalid duration '0s'"),
    ({"slack": {"timeout": "0s"}}, "slack.timeout: invalid duration '0s'"),
    ({"source__timeout": "0ms"}, "source.timeout: invalid duration '0s'"),
    ({"poll__interval": float("nan")}, "poll.interval: invalid duration nan"),
])
def test_durations_out_of_range_name_the_key(changes, message):
    with pytest.raises(ConfigError) as exc:
        parse_config(with_(**changes), env={})
    assert message in str(exc.value)


def test_zero_stays_valid_where_it_means_something():
    config = parse_config(with_(poll__max_lateness="0s", slack={"update_every": "0s",
                                                                "min_interval": "0s"}), env={})
    assert config.poll.max_lateness == timedelta(0)


def test_a_config_that_is_not_utf8_says_where(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_bytes(b"services: [spector]\nsignals:\n  - name: caf\xe9\n")
    with pytest.raises(ConfigError) as exc:
        load_config(path, env={})
    assert str(exc.value) == f"{path}: not UTF-8: byte 0xe9 at line 3, column 14"
    path.write_bytes(b"services: [spector]\n# \xc3\xa9 \xff\n")
    with pytest.raises(ConfigError) as exc:
        load_config(path, env={})
    assert str(exc.value).endswith("byte 0xff at line 2, column 5")  # columns count characters


def test_a_number_too_long_for_python_is_a_config_error(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("services: [spector]\npoll: {interval: " + "9" * 5000 + "}\n")
    with pytest.raises(ConfigError) as exc:
        load_config(path, env={})
    assert "not a usable value" in str(exc.value)
