"""config.yaml: pydantic models, `${VAR}` interpolation and one `Duration` type.

Rules: everything is validated before anything runs; unknown keys are errors (a typo must never
be silently ignored); an error names the key path and the problem, e.g.
`signals[0].window: invalid duration 'five minutes'`. Secrets come from the environment and are
masked whenever the config is printed; a secret (the token, the webhook URL) is never quoted in an
error.

Who is pinged, and where, is configuration only (`signals[].channel`, `signals[].mention`,
`slack.mention`): a mention is Slack markup that notifies people, so it is validated here against
the few forms Slack defines and never taken from log text, which the renderer always escapes.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    ValidationError,
    field_serializer,
    field_validator,
    model_validator,
)

from monitor.classify.requests import DEFAULT_IGNORE_PATHS
from monitor.correlate.state import Rules, SignalRule
from monitor.redact import mask_url
from monitor.regex import Regex, RegexError, compile_regex
from monitor.text import not_utf8
from monitor.times import format_duration, parse_duration

DEFAULT_PATH = "config.yaml"


class ConfigError(Exception):
    """A config that cannot be used; the message names the key path and the problem."""


def _not_zero(value: timedelta) -> timedelta:
    if value <= timedelta(0):
        raise ValueError(f"invalid duration {format_duration(value)!r}: must be more than 0s")
    return value


Duration = Annotated[
    timedelta,
    BeforeValidator(parse_duration),
    PlainSerializer(format_duration, return_type=str),
]
# Where zero means nothing (a poll interval, a window, a timeout): more than 0s.
PositiveDuration = Annotated[Duration, AfterValidator(_not_zero)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# Slack's mention markup, and nothing else: a user group (optionally with its handle as the label),
# a user, @here, @channel. IDs are Slack's upper-case ids (S... groups, U.../W... users).
_MENTION = re.compile(
    r"<!subteam\^S[A-Z0-9]{2,30}(?:\|@[A-Za-z0-9._-]{1,80})?>"
    r"|<@[UW][A-Z0-9]{2,30}>"
    r"|<!here>|<!channel>"
)
MAX_MENTION = 500  # characters: the mention leads the alert's text, which Slack cuts at 3,000


def parse_mention(value: Any) -> str | None:
    """Space-separated Slack mentions, normalised to single spaces; empty means none.

    The result is emitted raw (as markup that pings people), so anything that is not exactly one
    of Slack's mention forms is refused rather than escaped or guessed at.
    """
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError("must be a string of Slack mentions, e.g. '<!subteam^S0123ABC>'")
    parts = value.split()
    if not parts:
        return None
    for part in parts:
        if not _MENTION.fullmatch(part):
            raise ValueError(
                f"{part!r} is not a Slack mention (use <!subteam^S0123ABC>, "
                "<!subteam^S0123ABC|@handle>, <@U0123ABC>, <!here> or <!channel>, "
                "separated by spaces)")
    mention = " ".join(parts)
    if len(mention) > MAX_MENTION:
        raise ValueError(f"too long ({len(mention)} characters, at most {MAX_MENTION})")
    return mention


Mention = Annotated[str | None, BeforeValidator(parse_mention)]
Channel = Annotated[str, Field(min_length=1)]


class SourceConfig(_Model):
    type: Literal["cloud_logging", "file"] = "cloud_logging"
    transport: Literal["grpc", "rest"] = "grpc"
    api_endpoint: str | None = None
    path: Path | None = None
    # Cloud Logging allows about 60 read requests a minute per project; stay well inside it.
    max_requests_per_minute: Annotated[int, Field(ge=1, le=600)] = 30
    # Pages (of 1,000 entries) one cycle may read; a larger backlog is read over later cycles.
    max_pages_per_cycle: Annotated[int, Field(ge=1)] = 20
    # Request logs can be most of the volume: read this fraction of them (sample(insertId, f)).
    request_sample: Annotated[float, Field(gt=0, le=1)] = 1.0
    # Read only what can change a conclusion (signal matches, migration output, audit and
    # system events, failed requests) and probe for the evidence of health; false reads every
    # entry, as a file replay does.
    select: bool = True
    timeout: PositiveDuration = timedelta(seconds=30)  # per request; retries stay inside the cycle
    failures_before_alert: Annotated[int, Field(ge=1)] = 3  # failed cycles before "cannot read"

    @model_validator(mode="after")
    def _file_needs_path(self) -> SourceConfig:
        if self.type == "file" and self.path is None:
            raise ValueError("path: required when source.type is 'file'")
        return self


class PollConfig(_Model):
    interval: PositiveDuration = timedelta(seconds=60)
    max_lateness: Duration = timedelta(minutes=10)
    first_lookback: Duration = timedelta(hours=1)


class SignalConfig(_Model):
    model_config = ConfigDict(extra="forbid", frozen=True, arbitrary_types_allowed=True)

    name: Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9_.-]*$")]
    match: Regex  # RE2 (monitor.regex): linear time, the Logging query's dialect
    severity: Literal["critical", "high", "warning", "info"] = "critical"
    open_after: Annotated[int, Field(ge=1)] = 1
    window: PositiveDuration = timedelta(minutes=5)
    resolve_after: Duration = timedelta(minutes=15)
    channel: Channel | None = None  # this signal's incidents go here instead of slack.channel
    mention: Mention = None  # who the opening alert pings; falls back to slack.mention

    @field_validator("match", mode="before")
    @classmethod
    def _compile(cls, value: Any) -> Regex:
        if isinstance(value, Regex):
            return value
        if not isinstance(value, str) or not value:
            raise ValueError("must be a non-empty regular expression")
        try:
            return compile_regex(value)
        except RegexError as exc:
            raise ValueError(f"invalid regular expression {value!r}: {exc}") from None

    @field_serializer("match")
    def _pattern(self, value: Regex) -> str:
        return value.pattern


class EvidenceConfig(_Model):
    """What may show that failing work succeeds again (see README, "When an incident resolves")."""

    # Requests for these never count: an entry starting with "." is an extension the path ends
    # with, any other a text the path contains. An error page loads its own assets with 200s.
    ignore_paths: list[Annotated[str, Field(min_length=1)]] = list(DEFAULT_IGNORE_PATHS)


class MigrationsConfig(_Model):
    tool: Literal["prisma", "none"] = "prisma"


_LOCAL_HOSTS = ("127.0.0.1", "localhost")


class SlackConfig(_Model):
    channel: Channel = "#alerts"
    token: str = ""  # a bot token (secret): the Web API, threads and edits
    webhook_url: str = ""  # an Incoming Webhook (secret): one channel, no threads, no edits
    base_url: str | None = None
    mention: Mention = None  # pings for migration and source incidents and signals without one
    update_every: Duration = timedelta(minutes=15)
    min_interval: Duration = timedelta(seconds=1)  # between messages to one channel
    # A request's time limit; also how long a message whose send was interrupted stays "in
    # doubt" (it may still land) before the channel is searched for it.
    timeout: PositiveDuration = timedelta(seconds=10)

    @field_validator("webhook_url")
    @classmethod
    def _slack_hook(cls, value: str) -> str:
        # The URL is the secret: the message says what is wrong with it and never quotes it.
        value = value.strip()  # a secret file's trailing newline
        if not value:
            return value
        try:
            parts = urlsplit(value)
            where = (parts.scheme, parts.hostname)
        except ValueError:  # e.g. an unbalanced [ in the host
            where = ("", None)
        if where != ("https", "hooks.slack.com") and not (
                where[0] == "http" and where[1] in _LOCAL_HOSTS):
            raise ValueError("must be a Slack Incoming Webhook URL, starting with "
                             "https://hooks.slack.com/ (http://127.0.0.1 or http://localhost "
                             "for tests)")
        return value

    @model_validator(mode="after")
    def _one_way_to_post(self) -> SlackConfig:
        if self.token and self.webhook_url:
            raise ValueError("webhook_url: set either slack.token or slack.webhook_url, not both")
        return self

    @field_validator("base_url")
    @classmethod
    def _trailing_api(cls, value: str | None) -> str | None:
        # slack-sdk joins method names onto base_url: without the trailing slash every call 404s.
        if value is not None and not value.endswith("/"):
            value += "/"
        return value


class StateConfig(_Model):
    url: str = "sqlite:///.monitor/state.db"
    # How long a unit's lease lasts without renewal (renewed every interval): after a leader
    # dies, another instance takes over within this. Default: 3 intervals, at least 30 s.
    lease: Duration | None = None

    @field_validator("url")
    @classmethod
    def _scheme(cls, value: str) -> str:
        if not value.startswith(("sqlite:///", "postgresql://", "postgres://")):
            raise ValueError("must start with sqlite:/// or postgresql://")
        return value


class Target(_Model):
    """One unit of work: a project and the services watched in it."""

    project: str | None = None
    services: Annotated[list[str], Field(min_length=1)]


# A send starts only while the unit's lease has the notifier's timeout plus this left.
SEND_MARGIN = timedelta(seconds=1)


def unit_name(unit: Target) -> str:
    """The name a unit's checkpoint, lease and state go by in the store."""
    return unit.project or "default"


class Config(_Model):
    project: str | None = None
    services: list[str] = []
    targets: list[Target] = []
    source: SourceConfig = SourceConfig()
    poll: PollConfig = PollConfig()
    signals: Annotated[list[SignalConfig], Field(min_length=1)]
    migrations: MigrationsConfig = MigrationsConfig()
    evidence: EvidenceConfig = EvidenceConfig()
    slack: SlackConfig = SlackConfig()
    state: StateConfig = StateConfig()

    @model_validator(mode="after")
    def _units_of_work(self) -> Config:
        if self.targets and (self.services or self.project):
            raise ValueError("targets: use either targets or project + services, not both")
        if not self.targets and not self.services:
            raise ValueError("services: at least one service to watch is required")
        if self.source.type == "cloud_logging" and not all(t.project for t in self.units):
            raise ValueError("project: required when source.type is 'cloud_logging'")
        projects = [t.project for t in self.targets]
        again = next((i for i, p in enumerate(projects) if p in projects[:i]), None)
        if again is not None:
            raise ValueError(f"targets[{again}].project: {projects[again]!r} is already a "
                             "target; list all of a project's services in one target")
        if self.lease < 2 * self.poll.interval:
            raise ValueError(f"state.lease: {format_duration(self.lease)} is less than twice "
                             f"poll.interval ({format_duration(self.poll.interval)}); the "
                             "leader would lose its lease between two checks")
        if self.lease < self.slack.timeout + SEND_MARGIN * 2:
            raise ValueError(f"state.lease: {format_duration(self.lease)} leaves no time to "
                             f"send: a send starts only with slack.timeout + "
                             f"{SEND_MARGIN.total_seconds():.0f}s of lease left, so it must be "
                             f"at least {format_duration(self.slack.timeout + SEND_MARGIN * 2)}")
        names = [s.name for s in self.signals]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"signals: duplicate signal name {dupes[0]!r}")
        if self.slack.webhook_url:
            # A webhook posts to the one channel it was created for: a per-signal channel would
            # be silently ignored, so it is refused.
            routed = next((i for i, s in enumerate(self.signals) if s.channel), None)
            if routed is not None:
                raise ValueError(
                    f"signals[{routed}].channel: an Incoming Webhook posts only to its own "
                    "channel; remove it, or use a bot token (slack.token) to route signals")
        return self

    @property
    def units(self) -> list[Target]:
        """The units of work, whichever way the config spelt them."""
        if self.targets:
            return list(self.targets)
        return [Target(project=self.project, services=list(self.services))]

    @property
    def lease(self) -> timedelta:
        if self.state.lease is not None:
            return self.state.lease
        return max(3 * self.poll.interval, timedelta(seconds=30))

    @property
    def unit_names(self) -> list[str]:
        return [unit_name(u) for u in self.units]

    def signal(self, name: str) -> SignalConfig | None:
        return next((s for s in self.signals if s.name == name), None)

    def rules(self, unit: str | None = None) -> Rules:
        """The incident rules of `unit`, as the values the core applies (it reads no config)."""
        several = len(self.units) > 1
        return Rules(
            namespace=f"{unit}/" if several and unit else "",
            signals={
                s.name: SignalRule(s.severity, s.open_after, s.window, s.resolve_after)
                for s in self.signals
            },
            update_every=self.slack.update_every,
        )


# --- loading ---------------------------------------------------------------------------------

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-(.*?))?\}")


def _path_str(path: tuple[str | int, ...]) -> str:
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else part
    return out or "(top level)"


def _interpolate(node: Any, env: Mapping[str, str], path: tuple[str | int, ...]) -> Any:
    if isinstance(node, str):

        def sub(m: re.Match[str]) -> str:
            name, default = m.group(1), m.group(2)
            if name in env and env[name] != "":
                return env[name]
            if default is not None:
                return default
            raise ConfigError(
                f"{_path_str(path)}: environment variable {name} is not set "
                f"(write ${{{name}:-default}} to give a default)"
            )

        return _VAR.sub(sub, node)
    if isinstance(node, dict):
        return {k: _interpolate(v, env, (*path, str(k))) for k, v in node.items()}
    if isinstance(node, list):
        return [_interpolate(v, env, (*path, i)) for i, v in enumerate(node)]
    return node


_OWN_KEY = re.compile(r"^([a-z_]+(?:\[\d+\])?(?:\.[a-z_]+)*): (.*)$", re.S)


def _describe(error: ValidationError) -> str:
    lines = []
    for err in error.errors():
        loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and "[" in p))
        msg = err["msg"]
        msg = msg.removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        elif err["type"] == "missing":
            msg = "required key is missing"
        # A model validator names the key it checked at the front of its message ("path: ...").
        own = _OWN_KEY.match(msg) if err["type"] == "value_error" else None
        if own:
            loc, msg = (*loc, own.group(1)), own.group(2)
        lines.append(f"{_path_str(loc)}: {msg}")
    return "\n".join(lines)


def parse_config(data: Any, env: Mapping[str, str] | None = None) -> Config:
    """Validate an already-parsed YAML document; raises ConfigError naming the key."""
    if not isinstance(data, dict):
        raise ConfigError("(top level): the config must be a mapping of keys to values")
    try:
        data = _interpolate(data, os.environ if env is None else env, ())
        return Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_describe(exc)) from None
    except RecursionError:  # a YAML alias that contains itself: `services: &a [*a]`
        raise ConfigError("(top level): the config nests too deeply (an alias that contains "
                          "itself?)") from None


def load_config(path: str | Path, env: Mapping[str, str] | None = None) -> Config:
    """Read and validate config.yaml; a relative `source.path` is taken from the file's folder."""
    p = Path(path)
    try:
        raw = p.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{p}: cannot read config: {exc.strerror}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{p}: not UTF-8: {not_utf8(raw, exc)}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{p}: not valid YAML: {exc}") from None
    except ValueError as exc:  # an integer of more than 4,300 digits
        raise ConfigError(f"{p}: not a usable value: {exc}") from None
    except RecursionError:  # `[[[[...` thousands deep, an alias that contains itself
        raise ConfigError(f"{p}: not valid YAML: nested too deeply") from None
    config = parse_config(data, env)
    if config.source.path is not None and not config.source.path.is_absolute():
        source = config.source.model_copy(update={"path": p.parent / config.source.path})
        config = config.model_copy(update={"source": source})
    return config


def default_config_path(env: Mapping[str, str] | None = None) -> str:
    env = os.environ if env is None else env
    return env.get("MONITOR_CONFIG") or DEFAULT_PATH


def masked(config: Config) -> dict[str, Any]:
    """The effective config as plain data with every secret masked, for `check-config`."""
    data = config.model_dump(mode="json")
    if data["slack"]["token"]:
        data["slack"]["token"] = "***"
    if data["slack"]["webhook_url"]:
        # The host says which kind of hook it is; the path is the secret.
        hook = urlsplit(data["slack"]["webhook_url"])
        data["slack"]["webhook_url"] = f"{hook.scheme}://{hook.netloc}/***"
    data["state"]["url"] = mask_url(data["state"]["url"])
    return data
