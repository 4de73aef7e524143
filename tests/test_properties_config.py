"""Property tests: config loading lets out a valid Config or a ConfigError naming the key, nothing
else, whatever the document holds (monitor.config.parse_config / load_config)."""

from __future__ import annotations

import copy
import re
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from monitor.config import Config, ConfigError, load_config, parse_config

ENV = {"GOOGLE_CLOUD_PROJECT": "spector-prod", "SLACK_BOT_TOKEN": "xoxb-1-2-SECRETENV"}
BASE: dict[str, Any] = {
    "project": "spector-prod",
    "services": ["spector"],
    "signals": [{"name": "missing-session-table", "match": "MissingSessionTableError"}],
}

# --- strategies -------------------------------------------------------------------------------

# Text with what hypothesis leaves out by default: lone surrogates, plus pieces that mean
# something to the config (interpolation, YAML-ish punctuation, units).
_pieces = st.sampled_from([
    "\ud800", "\udfff", "\x00", "\u202e", "${GOOGLE_CLOUD_PROJECT}", "${UNSET}", "${UNSET:-d}",
    "${", "}", ":-", "5m", "1h30m", "-1s", "0s", "d", "ms", ":", "\n", "\u00e9", "\U0001d7d8",
    "<!channel>",
])
text = st.lists(st.one_of(st.text(max_size=8), _pieces), max_size=6).map("".join)
huge_ints = st.one_of(
    st.integers(),
    st.integers(min_value=10, max_value=60).map(lambda n: 10**n),
    st.integers(min_value=10, max_value=60).map(lambda n: -(10**n)),
    st.just(99999999999999999 * 86400),
)
# Past float's range, up to past int's 4,300-digit string conversion limit.
giant_ints = st.integers(min_value=300, max_value=5000).map(lambda n: (-1) ** n * 10**n)
numbers = st.one_of(huge_ints, st.floats(allow_nan=True, allow_infinity=True))
scalars = st.one_of(st.none(), st.booleans(), numbers, text)
yamlish = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4),
                            st.dictionaries(text, inner, max_size=4)),
    max_leaves=12,
)

# A duration as a person might (mis)type one: "1000000d", "99999999999999999d", "-5m", "1e400s".
_magnitudes = st.one_of(
    st.integers(min_value=-(10**6), max_value=10**6).map(str),
    st.sampled_from(["0", "0.0", "1000000", "99999999999999999", "9" * 400, "1e400", "1.5",
                     "0.0000001", "nan", "inf", "-0", ".5", "5.", "\u0663", "\u00b2"]),
)
_units = st.sampled_from(["ms", "s", "m", "h", "d", "", "w", "S", "D", " m", "mss"])
duration_text = st.lists(st.tuples(_magnitudes, _units).map("".join), min_size=1,
                         max_size=3).map("".join)
# Well-formed, of any size: "7s" .. "300000000d" (timedelta's range ends at ~1e9 days).
spelt_duration = st.builds(
    lambda n, unit: f"{n}{unit}",
    st.integers(min_value=0, max_value=300_000_000), st.sampled_from(["s", "m", "h", "d"]),
)
duration_value = st.one_of(duration_text, numbers, st.booleans(), st.none(), text,
                           st.lists(scalars, max_size=2))

DURATION_KEYS = [
    ("poll", "interval"), ("poll", "max_lateness"), ("poll", "first_lookback"),
    ("signals", 0, "window"), ("signals", 0, "resolve_after"), ("source", "timeout"),
    ("slack", "update_every"), ("slack", "min_interval"), ("slack", "timeout"),
    ("state", "lease"),
]
OTHER_KEYS = [
    ("project",), ("services",), ("targets",), ("source", "type"), ("source", "transport"),
    ("source", "path"), ("source", "max_requests_per_minute"), ("source", "request_sample"),
    ("source", "max_pages_per_cycle"), ("source", "failures_before_alert"),
    ("signals", 0, "name"), ("signals", 0, "match"), ("signals", 0, "severity"),
    ("signals", 0, "open_after"), ("signals", 0, "channel"), ("signals", 0, "mention"),
    ("migrations", "tool"), ("evidence", "ignore_paths"), ("slack", "channel"),
    ("slack", "token"), ("slack", "base_url"), ("slack", "mention"), ("state", "url"),
]


def _seconds(s: str) -> float:
    unit = s.lstrip("0123456789")
    n = int(s[: len(s) - len(unit)])
    return n * {"s": 1, "m": 60, "h": 3600, "d": 86400}[unit]


def _path_text(path: tuple[str | int, ...]) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out


def _set(data: dict[str, Any], path: tuple[str | int, ...], value: Any) -> dict[str, Any]:
    data = copy.deepcopy(data)
    node: Any = data
    for part in path[:-1]:
        node = node[part] if isinstance(part, int) else node.setdefault(part, {})
    node[path[-1]] = value
    return data


def outcome(data: Any) -> Config | ConfigError:
    """What parse_config makes of `data`; any exception but ConfigError fails the test."""
    try:
        return parse_config(data, env=ENV)
    except ConfigError as exc:
        assert str(exc).strip(), "a ConfigError must say what is wrong"
        return exc


# --- parse_config -----------------------------------------------------------------------------

def test_the_base_config_is_valid() -> None:
    assert isinstance(outcome(BASE), Config)


@given(yamlish)
@example([])
@example("project: spector")
@example(None)
@example({1: 2, None: [], 1.5: {}})
def test_any_document_gives_a_config_or_a_config_error(data: Any) -> None:
    """Non-mapping roots, unknown keys, wrong types, interpolation: ConfigError or a Config."""
    outcome(data)


@given(st.dictionaries(st.sampled_from(sorted({p[0] for p in DURATION_KEYS + OTHER_KEYS})),
                       yamlish, max_size=5))
def test_known_sections_with_any_content_give_a_config_or_a_config_error(
        sections: dict[str, Any]) -> None:
    outcome({**BASE, **sections})


@given(st.sampled_from(OTHER_KEYS), st.one_of(yamlish, giant_ints))
@example(("services",), [])
@example(("signals", 0, "match"), "\ud800")
@example(("signals", 0, "match"), "(unclosed")
@example(("signals", 0, "mention"), "<!everyone>")
@example(("project",), None)
def test_a_bad_value_for_a_known_key_is_an_error_naming_that_key(
        path: tuple[str | int, ...], value: Any) -> None:
    result = outcome(_set(BASE, path, value))
    if isinstance(result, ConfigError):
        assert _path_text(path[:2]) in str(result), (path, str(result))


@given(st.sampled_from(DURATION_KEYS), st.one_of(spelt_duration, duration_value))
@example(("poll", "interval"), "1000000d")
@example(("poll", "interval"), "99999999999999999d")
@example(("poll", "interval"), "400000000d")  # fits a timedelta, overflows the 3x lease
@example(("poll", "interval"), 10**30)
@example(("poll", "interval"), float("inf"))
@example(("poll", "interval"), "0s")
@example(("signals", 0, "window"), "-5m")
@example(("slack", "timeout"), "1e400s")
@example(("state", "lease"), float("nan"))
def test_a_duration_is_a_timedelta_or_an_error_naming_a_duration_key(
        path: tuple[str | int, ...], value: Any) -> None:
    """A value that parses is the timedelta it spells; one that does not (negative, enormous,
    NaN, misspelt) names its key, or the key it is checked with (state.lease against
    poll.interval and slack.timeout). Integers past float's range: see the xfail below."""
    result = outcome(_set(BASE, path, value))
    if isinstance(result, ConfigError):
        named = [_path_text(path), "state.lease"]
        assert any(n in str(result) for n in named), (path, str(result))
    elif isinstance(value, str) and re.fullmatch(r"[0-9]+[smhd]", value):
        section = getattr(result, str(path[0]))
        got = section[path[1]] if isinstance(path[1], int) else getattr(section, str(path[1]))
        if isinstance(path[1], int):
            got = getattr(got, str(path[2]))
        assert got == timedelta(seconds=_seconds(value))


@given(giant_ints)
@example(10**400)
def test_an_integer_duration_past_float_range_is_a_config_error(value: int) -> None:
    result = outcome(_set(BASE, ("poll", "interval"), value))
    assert isinstance(result, ConfigError) and "poll.interval" in str(result)


# --- load_config: the file itself ---------------------------------------------------------------

@pytest.fixture(scope="module")
def config_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("config")


def _load(path: Path, data: bytes) -> None:
    """load_config of a file holding `data`: a Config or a ConfigError, nothing else; an error
    never quotes the secrets the environment gives the config."""
    path.write_bytes(data)
    try:
        load_config(path, env=ENV)
    except ConfigError as exc:
        assert "SECRETENV" not in str(exc)


VALID = (b"project: spector-prod\nservices: [spector]\nsource: {type: file, path: x.json}\n"
         b"signals:\n  - {name: missing-session-table, match: MissingSessionTableError}\n"
         b"slack: {token: ${SLACK_BOT_TOKEN}}\n")


@given(st.integers(min_value=0, max_value=len(VALID)), st.binary(max_size=16))
def test_a_file_cut_anywhere_or_with_junk_appended_loads_or_names_the_problem(
        config_dir: Path, cut: int, junk: bytes) -> None:
    _load(config_dir / "cut.yaml", VALID[:cut] + junk)


@given(st.binary(max_size=200))
def test_any_bytes_load_or_name_the_problem(config_dir: Path, data: bytes) -> None:
    _load(config_dir / "bytes.yaml", data)


@given(st.one_of(
    st.integers(min_value=1, max_value=20000).map(lambda n: "[" * n),
    st.integers(min_value=1, max_value=3000).map(lambda n: "a:\n" + "".join(
        " " * i + "- \n" for i in range(n))),
))
@example("[" * 5000)
@example("project: p\nservices: &a [*a]\nsignals: [{name: a, match: x}]\n")
def test_deep_or_recursive_yaml_is_a_config_error(config_dir: Path, document: str) -> None:
    _load(config_dir / "deep.yaml", document.encode())


@given(text)
def test_an_error_never_quotes_the_token_or_the_webhook(value: str) -> None:
    data = _set(_set(BASE, ("slack", "token"), "xoxb-9-9-SECRETTOKEN"), ("slack", "channel"),
                value)
    result = outcome(data)
    if isinstance(result, ConfigError):
        assert "SECRETTOKEN" not in str(result)
