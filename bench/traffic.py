"""Deterministic, realistic Cloud Run traffic as JSON-form log entries (what `gcloud logging read
--format=json` prints), for every benchmark.

What it makes, per watched service, second by second of simulated time:
- request logs (`run.googleapis.com/requests`, an `httpRequest` with status, latency, sizes,
  trace), mostly 200s, a few 304/404s;
- app lines for about half of the requests, on stdout: plain text, or a structured `jsonPayload`;
- now and then an unrelated error with its Node stack trace, one entry per line, on stderr;
- deploys: the admin-activity audit entry (`Services.ReplaceService`), the new revision's
  start-up with its `prisma migrate deploy` output (one entry per line, per instance), and the
  system event "Ready condition status changed to True";
- a live incident on the first service: a deploy whose migration renamed the `Session` table, after
  which a share of requests fail with `MissingSessionTableError` (a 500 plus the error and its
  stack trace, line by line) until a fix deploy ships a fix migration.

Entries come out in timestamp order; `receiveTimestamp` is a little later (exponential lag, with a
few entries late by up to a minute, as Cloud Logging shows them). The same seed gives the same
entries, byte for byte, so every run of a benchmark reads the same traffic.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

NS = 1_000_000_000
T0 = datetime(2025, 12, 1, 0, 0, tzinfo=UTC)
SIGNATURE = "MissingSessionTableError"
ERROR_LINE = (f"{SIGNATURE}: Prisma session table does not exist. This could happen if the "
              "session table doesn't exist in the database.")
STACK = (
    "    at PrismaSessionStorage.ensureReady (/app/node_modules/@shopify/shopify-app-session-"
    "storage-prisma/dist/cjs/prisma.js:60:13)",
    "    at async PrismaSessionStorage.loadSession (/app/node_modules/@shopify/shopify-app-"
    "session-storage-prisma/dist/cjs/prisma.js:41:9)",
    "    at async authenticateAdmin (/app/node_modules/@shopify/shopify-app-remix/dist/cjs/"
    "server/authenticate/admin/authenticate.js:88:25)",
    "    at async loader$3 (file:///app/build/server/index.js:1042:20)",
    "    at async Object.callRouteLoader (/app/node_modules/@remix-run/server-runtime/dist/"
    "data.js:59:16)",
)
OTHER_ERRORS = (
    ("TypeError: Cannot read properties of undefined (reading 'id')",
     ("    at ProductCard (file:///app/build/server/index.js:811:31)",
      "    at renderWithHooks (/app/node_modules/react-dom/cjs/react-dom-server.node.js:5662:16)",
      "    at renderElement (/app/node_modules/react-dom/cjs/react-dom-server.node.js:5774:12)")),
    ("Error: connect ECONNREFUSED 10.8.0.3:5432",
     ("    at TCPConnectWrap.afterConnect [as oncomplete] (node:net:1555:16)",)),
    ("GraphqlQueryError: Throttled",
     ("    at throwFailedRequest (/app/node_modules/@shopify/admin-api-client/dist/graphql/"
      "client.js:102:11)",
      "    at async AdminApiClient.request (/app/node_modules/@shopify/admin-api-client/dist/"
      "graphql/client.js:62:24)")),
)
PATHS = ("/app", "/app/products", "/app/orders", "/app/settings", "/webhooks/orders/create",
         "/auth/callback", "/healthz", "/app/billing", "/api/graphql", "/assets/entry.client.js")
AGENTS = ("Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 (KHTML, like Gecko) "
          "Chrome/131.0.0.0 Safari/537.36", "Shopify-Captain-Hook", "GoogleHC/1.0",
          "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:133.0) Gecko/20100101 Firefox/133.0")
APP_LINES = ("[shopify-app/INFO] Authenticating admin request", "GET {path} 200 - {ms} ms",
             "[shopify-api/INFO] Loaded session from storage", "webhook processed topic=ORDERS_"
             "CREATE shop=shop-{n}.myshopify.com", "[remix] loader {path} {ms}ms")
BAD_MIGRATION = "20251204205052_map_session_table_to_lowercase"
FIX_MIGRATION = "20251213003742_fix_session_table_uppercase"


def rfc3339(ns: int, _cache: dict[int, str] = {}) -> str:  # noqa: B006  a per-second cache
    """RFC 3339 UTC with nanoseconds, as Cloud Logging writes `timestamp`."""
    sec, frac = divmod(ns, NS)
    base = _cache.get(sec)
    if base is None:
        if len(_cache) > 100_000:
            _cache.clear()
        base = _cache[sec] = datetime.fromtimestamp(sec, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{base}.{frac:09d}Z"


def to_ns(t: datetime) -> int:
    return int((t - datetime(1970, 1, 1, tzinfo=UTC)) / timedelta(microseconds=1)) * 1000


@dataclass(frozen=True)
class Profile:
    """How busy the simulated services are and how often things happen to them."""

    requests_per_second: float = 20.0  # across all services
    app_line_share: float = 0.55  # app lines per request
    other_error_rate: float = 0.002  # unrelated stack traces per request
    deploy_every: timedelta = timedelta(minutes=90)  # per service, +-30 %
    incident_every: int = 3  # every n-th deploy of the first service breaks the session table
    incident_length: timedelta = timedelta(minutes=25)  # until the fix deploy
    incident_failure_share: float = 0.4  # requests failing during the incident
    incident_services: int = 1  # how many of the services (first ones) have incidents
    first_deploy_after: timedelta = timedelta(minutes=12)  # of the first incident service
    instances: int = 2  # per revision


@dataclass
class ServiceState:
    name: str
    generation: int = 1
    revision: str = ""
    instances: list[str] = field(default_factory=list)
    next_deploy: int = 0  # ns
    deploys: int = 0
    broken_until: int = -1  # ns: requests fail with the signature until then
    fix_at: int = -1  # ns: the fix deploy
    migrations: list[str] = field(default_factory=list)


class Traffic:
    """`Traffic(seed).take(n)` or `.advance(until_ns)`: entries in timestamp order."""

    def __init__(self, seed: int = 7, *, project: str = "bench-prod",
                 services: tuple[str, ...] = ("storefront",), start: datetime = T0,
                 profile: Profile = Profile()) -> None:
        self.rng = random.Random(seed)
        self.project = project
        self.profile = profile
        self.now = to_ns(start)
        self._seq = 0
        self._resources: dict[tuple[str, str], dict[str, Any]] = {}
        self.services = []
        for i, name in enumerate(services):
            svc = ServiceState(name)
            svc.revision = self._revision_name(svc)
            svc.instances = [self._instance() for _ in range(profile.instances)]
            svc.migrations = ["20250301120000_init", "20250612093000_add_billing"]
            if i < profile.incident_services:
                svc.next_deploy = self.now + int(profile.first_deploy_after.total_seconds() * NS)
            else:
                svc.next_deploy = self.now + self._deploy_gap()
            self.services.append(svc)
        self.incidents: list[tuple[str, int, int]] = []  # (service, start ns, fix ns)

    # --- helpers ------------------------------------------------------------------------

    def _deploy_gap(self) -> int:
        gap = self.profile.deploy_every.total_seconds() * self.rng.uniform(0.7, 1.3)
        return int(gap * NS)

    def _revision_name(self, svc: ServiceState) -> str:
        suffix = "".join(self.rng.choices("abcdefghijklmnopqrstuvwxyz", k=3))
        return f"{svc.name}-{svc.generation:05d}-{suffix}"

    def _instance(self) -> str:
        return f"00{self.rng.getrandbits(240):060x}"

    def _insert_id(self) -> str:
        self._seq += 1
        return f"{self._seq:010x}{self.rng.getrandbits(24):06x}"

    def _receive(self, ns: int, slow: bool = False) -> str:
        r = self.rng.random()
        if r < 0.005:  # late: up to a minute on its way in
            lag = self.rng.uniform(5, 60)
        else:
            lag = self.rng.expovariate(1 / (1.8 if slow else 0.35)) + 0.004
        return rfc3339(ns + int(lag * NS))

    def _resource(self, service: str, revision: str) -> dict[str, Any]:
        key = (service, revision)
        res = self._resources.get(key)
        if res is None:
            res = self._resources[key] = {"type": "cloud_run_revision", "labels": {
                "configuration_name": service, "location": "us-central1",
                "project_id": self.project, "revision_name": revision, "service_name": service}}
        return res

    def _log(self, log: str) -> str:
        return f"projects/{self.project}/logs/{log.replace('/', '%2F')}"

    def _base(self, ns: int, svc: ServiceState, instance: str, log: str) -> dict[str, Any]:
        return {"insertId": self._insert_id(), "labels": {"instanceId": instance},
                "logName": self._log(log), "receiveTimestamp": self._receive(ns),
                "resource": self._resource(svc.name, svc.revision), "timestamp": rfc3339(ns)}

    def line(self, ns: int, svc: ServiceState, instance: str, text: str,
             stream: str = "stdout") -> dict[str, Any]:
        entry = self._base(ns, svc, instance, f"run.googleapis.com/{stream}")
        entry["severity"] = "ERROR" if stream == "stderr" else "DEFAULT"
        entry["textPayload"] = text
        return entry

    def request(self, ns: int, svc: ServiceState, instance: str, status: int,
                path: str | None = None) -> dict[str, Any]:
        rng = self.rng
        latency = rng.expovariate(1 / 0.08) + 0.002
        entry = self._base(ns, svc, instance, "run.googleapis.com/requests")
        entry["receiveTimestamp"] = self._receive(ns + int(latency * NS))
        entry["severity"] = "ERROR" if status >= 500 else "WARNING" if status >= 400 else "INFO"
        path = path or PATHS[rng.randrange(len(PATHS))]
        entry["httpRequest"] = {
            "latency": f"{latency:.9f}s", "protocol": "HTTP/1.1",
            "remoteIp": f"203.0.113.{rng.randrange(1, 255)}", "requestMethod": "GET",
            "requestSize": str(rng.randint(90, 900)),
            "requestUrl": f"https://{svc.name}-abc123-uc.a.run.app{path}",
            "responseSize": str(rng.randint(900, 48_000)), "status": status,
            "userAgent": AGENTS[rng.randrange(len(AGENTS))]}
        entry["spanId"] = f"{rng.getrandbits(64):016x}"
        entry["trace"] = f"projects/{self.project}/traces/{rng.getrandbits(128):032x}"
        entry["traceSampled"] = True
        return entry

    def incident_lines(self, ns: int, svc: ServiceState, instance: str) -> list[dict[str, Any]]:
        """The signature and its stack trace, one entry per line, microseconds apart."""
        out = [self.line(ns, svc, instance, ERROR_LINE, "stderr")]
        for k, text in enumerate(STACK, 1):
            out.append(self.line(ns + k * 37_000, svc, instance, text, "stderr"))
        return out

    # --- deploys ------------------------------------------------------------------------

    def _deploy(self, ns: int, svc: ServiceState, index: int) -> list[dict[str, Any]]:
        """Audit entry, start-up with Prisma output per instance, Ready system event."""
        out: list[dict[str, Any]] = []
        svc.deploys += 1
        svc.generation += 1
        new_revision = self._revision_name(svc)
        fixing = svc.fix_at >= 0 and ns >= svc.fix_at
        breaking = (not fixing and index < self.profile.incident_services
                    and svc.deploys % self.profile.incident_every == 1)
        if fixing:
            migration: str | None = FIX_MIGRATION
            svc.fix_at = -1
            svc.broken_until = -1
        elif breaking:
            migration = BAD_MIGRATION
        else:
            migration = (f"2025{self.rng.randrange(1, 13):02d}{self.rng.randrange(1, 28):02d}"
                         f"{self.rng.randrange(10**6):06d}_change_{svc.deploys}"
                         if self.rng.random() < 0.4 else None)
        audit_res = {"type": "cloud_run_revision", "labels": {
            "configuration_name": "", "location": "us-central1", "project_id": self.project,
            "revision_name": "", "service_name": svc.name}}
        out.append({
            "insertId": f"-{self._insert_id()}", "logName": self._log(
                "cloudaudit.googleapis.com/activity"),
            "protoPayload": {
                "@type": "type.googleapis.com/google.cloud.audit.AuditLog",
                "authenticationInfo": {"principalEmail": "deployer@bench-prod.iam."
                                                         "gserviceaccount.com"},
                "methodName": "google.cloud.run.v1.Services.ReplaceService",
                "resourceName": f"namespaces/{self.project}/services/{svc.name}",
                "serviceName": "run.googleapis.com",
                "response": {"metadata": {"name": svc.name}, "spec": {"template": {
                    "metadata": {"name": new_revision}}}},
                "status": {}},
            "receiveTimestamp": self._receive(ns, slow=True), "resource": audit_res,
            "severity": "NOTICE", "timestamp": rfc3339(ns)})
        svc.revision = new_revision
        svc.instances = [self._instance() for _ in range(self.profile.instances)]
        t = ns + 20 * NS
        pending = [migration] if migration else []
        if migration:
            svc.migrations.append(migration)
        for instance in svc.instances:
            lines = ["Prisma schema loaded from prisma/schema.prisma",
                     'Datasource "db": PostgreSQL database "app", schema "public" at '
                     '"10.8.0.3:5432"', f"{len(svc.migrations)} migrations found in "
                                        "prisma/migrations"]
            if pending and instance == svc.instances[0]:
                lines += [f"Applying migration `{pending[0]}`",
                          "The following migration(s) have been applied:", "migrations/",
                          f"  └─ {pending[0]}/", "    └─ migration.sql",
                          "All migrations have been successfully applied."]
            else:
                lines += ["No pending migrations to apply."]
            lines += ["> remix-serve ./build/server/index.js",
                      "[remix-serve] http://localhost:8080 (http://169.254.8.1:8080)"]
            for k, text in enumerate(lines):
                out.append(self.line(t + k * 3_000_000, svc, instance, text))
            t += 400_000_000
        ready_at = t + 2 * NS
        out.append({
            "insertId": self._insert_id()[:11], "logName": self._log(
                "cloudaudit.googleapis.com/system_event"),
            "protoPayload": {
                "@type": "type.googleapis.com/google.cloud.audit.AuditLog",
                "methodName": "/Services.CreateService",
                "resourceName": f"namespaces/{self.project}/revisions/{new_revision}",
                "serviceName": "run.googleapis.com",
                "status": {"message": f"Ready condition status changed to True for Revision "
                                      f"{new_revision}."}},
            "receiveTimestamp": self._receive(ready_at, slow=True),
            "resource": self._resource(svc.name, new_revision), "severity": "INFO",
            "timestamp": rfc3339(ready_at)})
        if breaking:
            svc.fix_at = ns + int(self.profile.incident_length.total_seconds() * NS)
            svc.broken_until = svc.fix_at
            svc.next_deploy = svc.fix_at
            self.incidents.append((svc.name, ready_at, svc.fix_at))
        else:
            svc.next_deploy = ns + self._deploy_gap()
        return out

    # --- time ---------------------------------------------------------------------------

    def _step(self, start: int, seconds: int) -> list[dict[str, Any]]:
        """Everything stamped within [start, start + seconds), unsorted."""
        p, rng = self.profile, self.rng
        out: list[dict[str, Any]] = []
        span = seconds * NS
        expected = p.requests_per_second / len(self.services) * seconds
        for index, svc in enumerate(self.services):
            if svc.next_deploy < start + span:
                out.extend(self._deploy(max(svc.next_deploy, start), svc, index))
            # the whole part, plus one more with the fractional part's probability
            n = int(expected) + (rng.random() < expected % 1)
            for _ in range(n):
                ns = start + rng.randrange(span)
                out.extend(self.requests(ns, svc))
        return out

    def requests(self, ns: int, svc: ServiceState) -> list[dict[str, Any]]:
        """One request served at `ns`, with what the app logs about it."""
        p, rng = self.profile, self.rng
        instance = svc.instances[rng.randrange(len(svc.instances))]
        if svc.broken_until > ns and rng.random() < p.incident_failure_share:
            return [self.request(ns, svc, instance, 500, "/app"),
                    *self.incident_lines(ns + 1_000_000, svc, instance)]
        r = rng.random()
        status = 200 if r < 0.93 else 304 if r < 0.97 else 404
        out = [self.request(ns, svc, instance, status)]
        if rng.random() < p.app_line_share:
            out.append(self._app_line(ns + 500_000, svc, instance))
        if rng.random() < p.other_error_rate:
            head, stack = OTHER_ERRORS[rng.randrange(len(OTHER_ERRORS))]
            out.append(self.line(ns + 700_000, svc, instance, head, "stderr"))
            for k, text in enumerate(stack, 1):
                out.append(self.line(ns + 700_000 + k * 41_000, svc, instance, text, "stderr"))
        return out

    def service(self, name: str) -> ServiceState:
        return next(s for s in self.services if s.name == name)

    def _app_line(self, ns: int, svc: ServiceState, instance: str) -> dict[str, Any]:
        rng = self.rng
        path = PATHS[rng.randrange(len(PATHS))]
        if rng.random() < 0.25:
            entry = self._base(ns, svc, instance, "run.googleapis.com/stdout")
            entry["severity"] = "INFO"
            entry["jsonPayload"] = {"level": "info", "message": f"session loaded for {path}",
                                    "shop": f"shop-{rng.randrange(500)}.myshopify.com",
                                    "durationMs": rng.randrange(2, 400)}
            return entry
        text = APP_LINES[rng.randrange(len(APP_LINES))].format(
            path=path, ms=rng.randrange(2, 400), n=rng.randrange(500))
        return self.line(ns, svc, instance, text)

    def advance(self, until_ns: int) -> list[dict[str, Any]]:
        """Every entry stamped in [now, until_ns), in timestamp order; moves `now` on."""
        out: list[dict[str, Any]] = []
        per_service = self.profile.requests_per_second / len(self.services)
        step = max(1, min(300, int(5 / per_service))) if per_service > 0 else 300
        while self.now + NS <= until_ns:
            seconds = max(1, min(step, (until_ns - self.now) // NS))
            out.extend(self._step(self.now, seconds))
            self.now += seconds * NS
        out.sort(key=lambda e: (e["timestamp"], e["insertId"]))
        return out

    def chunks(self, seconds: int = 60) -> Iterator[list[dict[str, Any]]]:
        """Endless traffic, `seconds` of simulated time per chunk."""
        while True:
            yield self.advance(self.now + seconds * NS)

    def take(self, n: int) -> list[dict[str, Any]]:
        """The first `n` entries (a whole number of simulated seconds, cut at n)."""
        out: list[dict[str, Any]] = []
        for chunk in self.chunks(60):
            out.extend(chunk)
            if len(out) >= n:
                return out[:n]
        raise AssertionError("unreachable")
