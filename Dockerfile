# The monitor as a container for Cloud Run (deploy guide: docs/cloud-run.md).
#
# Base image: the official Python image with the Python patch release and the Debian release both
# pinned. `python:3.11-slim` moves to each new patch release, and to the next Debian release
# when one becomes stable, under an unchanged Dockerfile; `3.11.14-slim-bookworm` changes only
# when this line does (the same tag is still rebuilt for Debian security updates). Both stages use
# the same tag, so the interpreter path pip writes into the console script's `#!` line in the
# build stage (under /usr/local/bin) is the final stage's interpreter. For byte-for-byte
# reproducible builds, append the tag's digest (`@sha256:...`) where the registry can be reached
# to read it.

# ---- build: a wheel of the project, installed with its dependencies into /install -------------
FROM python:3.11.14-slim-bookworm AS build

ENV PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
# Only what the wheel is built from: the metadata (pyproject's `readme` is README.md) and the
# package. .dockerignore keeps everything else (tests, examples, bench, .git, state) out of the
# build context in the first place.
COPY pyproject.toml README.md ./
COPY monitor/ ./monitor/

# The wheel holds exactly the packaged files; installing it (not the source tree) under a prefix
# gives the final stage one directory to copy: the package, its dependencies and the `monitor`
# console script, with no pip cache, no build tools and no sources.
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels . \
    && pip install --no-cache-dir --prefix=/install /wheels/monitor-*.whl

# ---- runtime -----------------------------------------------------------------------------------
FROM python:3.11.14-slim-bookworm

# A fixed, unprivileged UID/GID (no login shell, no home outside /app). `--no-log-init` keeps a
# high UID from bloating /var/log/faillog and lastlog.
RUN groupadd --system --gid 10001 monitor \
    && useradd --system --no-log-init --uid 10001 --gid monitor \
        --home-dir /app --shell /usr/sbin/nologin monitor

COPY --from=build /install /usr/local

WORKDIR /app
# The shipped configuration, owned by root: the process can read it, not change it.
COPY config.yaml /app/config.yaml

# State: the default `sqlite:///.monitor/state.db` is relative to /app, so /app belongs to the
# user. SQLite is right for one instance on a long-lived host. On Cloud Run the file system is
# memory and is gone when the instance stops: there MONITOR_STATE_URL must point at PostgreSQL
# (Cloud SQL, `postgresql://...`; monitor/store/postgres.py), which several instances can share
# under leases (docs/cloud-run.md).
RUN chown monitor:monitor /app

# PORT: Cloud Run sets it (8080 unless told otherwise); the default serves `docker run` too.
# MONITOR_HTTP_HOST: inside a container the HTTP server must listen on all interfaces, or a
# published port (`docker run -p 8080:8080`) reaches nothing; outside Cloud Run `monitor run`
# would otherwise listen on loopback only.
ENV PORT=8080 \
    MONITOR_CONFIG=/app/config.yaml \
    MONITOR_HTTP_HOST=0.0.0.0 \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1

USER 10001:10001

EXPOSE 8080

# No HEALTHCHECK: Cloud Run ignores it and probes the container itself (a TCP startup probe on
# $PORT by default; /healthz and /readyz are there for HTTP probes, see docs/cloud-run.md).

# Exec form, no shell in between: `monitor` is PID 1 and receives Cloud Run's SIGTERM directly,
# so it can stop the running check and drain the outbox within the 10-second grace period. A
# shell-form CMD (`/bin/sh -c monitor run`) would get the signal instead and not pass it on.
CMD ["monitor", "run"]
