"""Who this process is, among the instances that share a store."""

from __future__ import annotations

import os
import secrets
import socket


def instance_id(env: dict[str, str] | None = None) -> str:
    """Unique per process and readable in `monitor status`: the Cloud Run revision (or host),
    the pid and a random suffix (a restarted container may reuse a pid)."""
    return f"{_where(env)}-{os.getpid()}-{secrets.token_hex(3)}"


def _where(env: dict[str, str] | None = None) -> str:
    env = dict(os.environ) if env is None else env
    return env.get("K_REVISION") or socket.gethostname()


def gone_locally(holder: str) -> bool:
    """True when `holder` names a process of this host that no longer exists. Only a store on
    one host (SQLite) may use this: there a killed `monitor once` need not block the next for a
    whole lease. Anything else (another host, a malformed id, a live pid) is False."""
    where, _, pid = holder.removeprefix("once-").rpartition("-")[0].rpartition("-")
    if where != _where() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except OSError:  # exists, owned by someone else
        return False
    return False
