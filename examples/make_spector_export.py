"""Write examples/spector-incident.json: the spector incident as `gcloud logging read` exports it.

Why a generator: the demo, the README and the end-to-end tests need one realistic incident, and
real production logs cannot be published. This script is the source of truth; the JSON file is its
output, reproducible byte for byte (a seeded `random.Random`, no wall clock, sorted keys), so a
reviewer can read the story here and regenerate the file instead of trusting a 1 MB blob.

The shapes are what Cloud Run writes: stdout/stderr lines as `textPayload` entries (one entry per
output line, so stack traces and Prisma errors arrive in pieces), `run.googleapis.com/requests`
entries with `httpRequest`, admin-activity audit entries for deploys
(`google.cloud.run.v1.Services.ReplaceService`) and system-event audit entries for readiness. The
file is a pretty-printed JSON array, newest entry first, like `gcloud logging read --format=json`
(`--order=desc` is its default): the monitor must not depend on file order.

The story (UTC; project spector-prod, region us-central1, service spector):

2025-12-04
  20:00      spector-00041-kav serves normally (200s, app lines, unrelated noise: an invalid-HMAC
             webhook 401, a scanner 404, a slow report). Another service, spector-worker, has
             its own unrelated errors (TimeoutError: job fetch-orders exceeded 30s) all along.
  21:02:00   deploy of spector-00042-wex (audit). Its two instances both run
             `npx prisma migrate deploy; npm run start`: the first applies
             20251204205052_map_session_table_to_lowercase, the second finds nothing to apply.
  21:02:40   Ready condition True for Revision spector-00042-wex.
  21:03      every request to 00042 fails: HTTP 500 and a MissingSessionTableError stack trace
             (its Prisma client was generated before the table was renamed and still queries
             "Session"). 00041 serves 200s until 21:04:40, then no more traffic.
  -23:00     errors every 1-3 minutes.
2025-12-05
  03:10      a new 00042 instance runs migrate deploy again: P3018, 42P07 `relation "session"
             already exists` (overnight someone deleted the migration's row from
             _prisma_migrations to "re-run" it; that leaves a failed migration started at
             2025-12-05 03:10:14.262 UTC). The start script carries on; requests keep failing.
  ...        errors through 2025-12-12 from 14:00 to 03:00 UTC (US daytime and evening), none at
             night: 0-3 an hour, sampled sparsely (about 9 a day) to keep the file near 1.4 MB.
             No other traffic reaches spector then, so the quiet gaps show no successful requests.
2025-12-13
  00:00      errors every 1-3 minutes again.
  00:41:03   deploy of spector-00043-fiz with the fix migration: migrate deploy fails with P3009
             (the failed 20251204205052 migration blocks new ones); the app starts anyway.
  00:41:48   Ready condition True for Revision spector-00043-fiz; it serves, and fails the same way.
  01:05:02   deploy of spector-00044-mop: `prisma migrate resolve --rolled-back` marks
             20251204205052_map_session_table_to_lowercase rolled back, then migrate deploy
             re-applies it (made idempotent in the fix) and applies
             20251213003742_fix_session_table_uppercase.
  01:06:20   Ready condition True for Revision spector-00044-mop; 200s from 01:06:30.
  01:07:05   the last MissingSessionTableError, from 00043 while traffic drains.
  -02:15     a healthy hour on 00044: 200s every 30-60 s, app lines, the same unrelated noise.

Run: python examples/make_spector_export.py [-o PATH]   (default: next to this script)
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

SEED = 20251204
PROJECT = "spector-prod"
PROJECT_NUMBER = "418730925561"
REGION = "us-central1"
SERVICE = "spector"
WORKER = "spector-worker"
HOST = "https://spector-7x3kq2hfpa-uc.a.run.app"
WORKER_HOST = "https://spector-worker-7x3kq2hfpa-uc.a.run.app"
IMAGE = f"{REGION}-docker.pkg.dev/{PROJECT}/spector/spector"
DEPLOYER = f"github-deployer@{PROJECT}.iam.gserviceaccount.com"
RUNTIME_SA = f"spector-run@{PROJECT}.iam.gserviceaccount.com"

REV_41 = "spector-00041-kav"
REV_42 = "spector-00042-wex"
REV_43 = "spector-00043-fiz"
REV_44 = "spector-00044-mop"
REV_WORKER = "spector-worker-00017-tuz"

# prisma/migrations holds 20240530213853_create_session_table and 20250918141207_add_shop_settings,
# then these two:
MIG_LOWER = "20251204205052_map_session_table_to_lowercase"
MIG_FIX = "20251213003742_fix_session_table_uppercase"
FAILED_AT = "2025-12-05 03:10:14.262 UTC"  # start of the failed run of MIG_LOWER (P3018)

SHOPS = [
    "northwind-goods.myshopify.com",
    "lumiere-cafe.myshopify.com",
    "tallgrass-outfitters.myshopify.com",
    "spector-demo.myshopify.com",
    "harbor-and-pine.myshopify.com",
]
BROWSERS = [
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/131.0.0.0 Safari/537.36",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/131.0.0.0 Safari/537.36 Edg/131.0.0.0",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    "Version/18.1 Safari/605.1.15",
]
MISSING_TABLE = (
    "MissingSessionTableError: Prisma session table does not exist. This could happen if the "
    "migration wasn't run. Please ensure the migration has been run."
)
PRISMA_JS = "/app/node_modules/@shopify/shopify-app-session-storage-prisma/dist/cjs/prisma.js"
REMIX_AUTH = "/app/node_modules/@shopify/shopify-app-remix/dist/cjs/server/authenticate"


# --- time: integer nanoseconds since the epoch, so nothing is ever rounded -----------------------

NS = 1_000_000_000
MS = 1_000_000
US = 1_000


def at(text: str) -> int:
    """'2025-12-04 21:02:00.5' (UTC) -> nanoseconds since the epoch."""
    whole, _, frac = text.partition(".")
    t = datetime.strptime(whole, "%Y-%m-%d %H:%M:%S").replace(tzinfo=UTC)
    return int(t.timestamp()) * NS + int((frac + "000000000")[:9])


def rfc3339(t: int, digits: int = 9) -> str:
    sec, nanos = divmod(t, NS)
    base = datetime.fromtimestamp(sec, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{base}.{nanos:09d}"[: len(base) + 1 + digits] + "Z"


def seconds(t: float) -> int:
    return round(t * NS)


# --- entries -------------------------------------------------------------------------------------


def log_name(log: str) -> str:
    return f"projects/{PROJECT}/logs/{log.replace('/', '%2F')}"


def run_resource(service: str, revision: str) -> dict[str, Any]:
    return {
        "type": "cloud_run_revision",
        "labels": {
            "configuration_name": service,
            "location": REGION,
            "project_id": PROJECT,
            "revision_name": revision,
            "service_name": service,
        },
    }


class Export:
    """Collects entries with their exact times; renders them newest first."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.entries: list[tuple[int, dict[str, Any]]] = []
        self._ids: set[str] = set()

    def _unique(self, make: Any) -> str:
        while True:
            value: str = make()
            if value not in self._ids:
                self._ids.add(value)
                return value

    def run_insert_id(self, t: int) -> str:
        return self._unique(lambda: f"{t // NS:08x}{self.rng.getrandbits(64):016x}")

    def audit_insert_id(self, prefix: str = "") -> str:
        alphabet = "abcdefghijklmnopqrstuvwxyz0123456789"
        return self._unique(lambda: prefix + "".join(self.rng.choices(alphabet, k=12)))

    def receive(self, t: int, *, slow: bool = False) -> str:
        lag = self.rng.expovariate(1 / (1.8 if slow else 0.35)) + 0.004
        return rfc3339(t + seconds(lag))

    def add(self, t: int, entry: dict[str, Any]) -> None:
        self.entries.append((t, entry))

    def render(self) -> str:
        ordered = sorted(self.entries, key=lambda e: (e[0], e[1]["insertId"]), reverse=True)
        return json.dumps([e for _, e in ordered], indent=2, sort_keys=True, ensure_ascii=False)


@dataclass
class Instance:
    """One container instance of a revision: its output lines and the requests it serves."""

    out: Export
    service: str
    revision: str
    instance_id: str

    def _base(self, t: int, log: str) -> dict[str, Any]:
        return {
            "insertId": self.out.run_insert_id(t),
            "labels": {"instanceId": self.instance_id},
            "logName": log_name(log),
            "receiveTimestamp": self.out.receive(t),
            "resource": run_resource(self.service, self.revision),
            "timestamp": rfc3339(t),
        }

    def line(self, t: int, text: str, stream: str = "stdout") -> None:
        entry = self._base(t, f"run.googleapis.com/{stream}")
        entry["severity"] = "ERROR" if stream == "stderr" else "DEFAULT"
        entry["textPayload"] = text
        self.out.add(t, entry)

    def lines(self, t: int, texts: Sequence[str], stream: str = "stdout", gap: float = 0.0) -> int:
        """Consecutive lines of one write; returns the time after the last one."""
        rng = self.out.rng
        for text in texts:
            self.line(t, text, stream)
            t += seconds(gap * rng.uniform(0.5, 1.5)) if gap else rng.randint(4, 90) * US
        return t

    def system(self, t: int, text: str) -> None:
        """run.googleapis.com/varlog/system: what the platform says about the container."""
        entry = self._base(t, "run.googleapis.com/varlog/system")
        entry["severity"] = "INFO"
        entry["textPayload"] = text
        self.out.add(t, entry)

    def request(
        self,
        t: int,
        method: str,
        path: str,
        status: int,
        latency: float,
        *,
        user_agent: str,
        remote_ip: str,
        host: str = HOST,
        response_size: int | None = None,
    ) -> None:
        rng = self.out.rng
        end = t + seconds(latency)
        entry = self._base(t, "run.googleapis.com/requests")
        entry["receiveTimestamp"] = self.out.receive(end)
        entry["severity"] = "ERROR" if status >= 500 else "WARNING" if status >= 400 else "INFO"
        size = response_size if response_size is not None else rng.randint(900, 48_000)
        entry["httpRequest"] = {
            "latency": f"{latency:.9f}s",  # a protobuf Duration: 0, 3, 6 or 9 digits
            "protocol": "HTTP/1.1",
            "remoteIp": remote_ip,
            "requestMethod": method,
            "requestSize": str(
                rng.randint(380, 2400) if method == "POST" else rng.randint(90, 900)
            ),
            "requestUrl": host + path,
            "responseSize": str(size),
            "status": status,
            "userAgent": user_agent,
        }
        entry["spanId"] = f"{rng.getrandbits(64):016x}"
        entry["trace"] = f"projects/{PROJECT}/traces/{rng.getrandbits(128):032x}"
        entry["traceSampled"] = True
        self.out.add(t, entry)


def instance_id(rng: random.Random, prefix: str = "00") -> str:
    return (prefix + f"{rng.getrandbits(256):064x}")[:64]


# --- audit entries -------------------------------------------------------------------------------


def deploy(out: Export, t: int, revision: str, generation: int, digest: str, version: str) -> None:
    """Admin activity: `gcloud run deploy` replacing the service with a new template."""
    template = {
        "metadata": {
            "annotations": {
                "autoscaling.knative.dev/maxScale": "4",
                "autoscaling.knative.dev/minScale": "1",
                "run.googleapis.com/client-name": "gcloud",
                "run.googleapis.com/client-version": "502.0.0",
                "run.googleapis.com/cloudsql-instances": f"{PROJECT}:{REGION}:spector-db",
                "run.googleapis.com/startup-cpu-boost": "true",
            },
            "labels": {"client.knative.dev/nonce": out.audit_insert_id()[:10]},
            "name": revision,
        },
        "spec": {
            "containerConcurrency": 80,
            "containers": [
                {
                    "env": [
                        {"name": "NODE_ENV", "value": "production"},
                        {"name": "APP_VERSION", "value": version},
                        {
                            "name": "DATABASE_URL",
                            "valueFrom": {
                                "secretKeyRef": {"key": "latest", "name": "database-url"}
                            },
                        },
                    ],
                    "image": f"{IMAGE}@sha256:{digest}",
                    "ports": [{"containerPort": 8080, "name": "http1"}],
                    "resources": {"limits": {"cpu": "1000m", "memory": "1Gi"}},
                }
            ],
            "serviceAccountName": RUNTIME_SA,
            "timeoutSeconds": 300,
        },
    }
    service = {
        "apiVersion": "serving.knative.dev/v1",
        "kind": "Service",
        "metadata": {
            "annotations": {"run.googleapis.com/ingress": "all"},
            "name": SERVICE,
            "namespace": PROJECT_NUMBER,
        },
        "spec": {"template": template, "traffic": [{"latestRevision": True, "percent": 100}]},
    }
    response = json.loads(json.dumps(service))
    response["@type"] = "type.googleapis.com/google.cloud.run.v1.Service"
    response["metadata"].update(
        {
            "creationTimestamp": "2024-06-03T14:22:51.318204Z",
            "generation": generation,
            "resourceVersion": f"AAY{out.audit_insert_id()[:10]}",
            "selfLink": (
                f"/apis/serving.knative.dev/v1/namespaces/{PROJECT_NUMBER}/services/{SERVICE}"
            ),
            "uid": "6f1c2b7e-93a4-4d1e-8b55-0c7e2a91d3f4",
        }
    )
    response["status"] = {
        "conditions": [
            {"lastTransitionTime": rfc3339(t, 6), "status": "Unknown", "type": "Ready"},
            {
                "lastTransitionTime": rfc3339(t, 6),
                "status": "Unknown",
                "type": "ConfigurationsReady",
            },
            {"lastTransitionTime": rfc3339(t, 6), "status": "Unknown", "type": "RoutesReady"},
        ],
        "observedGeneration": generation,
    }
    resource_name = f"namespaces/{PROJECT}/services/{SERVICE}"
    out.add(
        t,
        {
            "insertId": out.audit_insert_id("-"),
            "logName": log_name("cloudaudit.googleapis.com/activity"),
            "protoPayload": {
                "@type": "type.googleapis.com/google.cloud.audit.AuditLog",
                "authenticationInfo": {"principalEmail": DEPLOYER},
                "authorizationInfo": [
                    {
                        "granted": True,
                        "permission": "run.services.update",
                        "resource": resource_name,
                        "resourceAttributes": {},
                    }
                ],
                "methodName": "google.cloud.run.v1.Services.ReplaceService",
                "request": {
                    "@type": "type.googleapis.com/google.cloud.run.v1.ReplaceServiceRequest",
                    "name": resource_name,
                    "service": service,
                },
                "requestMetadata": {
                    "callerIp": "20.42.117.203",
                    "callerSuppliedUserAgent": "google-cloud-sdk gcloud/502.0.0 "
                    "command/gcloud.run.deploy invocation-id/"
                    f"{out.rng.getrandbits(128):032x} environment/github_actions "
                    "interactive/False from-script/True python/3.12.7,gzip(gfe)",
                    "destinationAttributes": {},
                    "requestAttributes": {"auth": {}, "time": rfc3339(t - 41 * MS, 6)},
                },
                "resourceLocation": {"currentLocations": [REGION]},
                "resourceName": resource_name,
                "response": response,
                "serviceName": "run.googleapis.com",
                "status": {},
            },
            "receiveTimestamp": out.receive(t, slow=True),
            "resource": {
                "type": "cloud_run_revision",
                "labels": {
                    "configuration_name": "",
                    "location": REGION,
                    "project_id": PROJECT,
                    "revision_name": "",
                    "service_name": SERVICE,
                },
            },
            "severity": "NOTICE",
            "timestamp": rfc3339(t, 6),
        },
    )


def ready(out: Export, t: int, revision: str) -> None:
    """System events: the revision's Ready condition turns True, then the service's."""
    for kind, name, when in (("Revision", revision, t), ("Service", SERVICE, t + 742 * MS)):
        resource = run_resource(SERVICE, revision if kind == "Revision" else "")
        if kind == "Service":
            resource["labels"]["configuration_name"] = ""
        plural = "revisions" if kind == "Revision" else "services"
        out.add(
            when,
            {
                "insertId": out.audit_insert_id()[:11],
                "logName": log_name("cloudaudit.googleapis.com/system_event"),
                "protoPayload": {
                    "@type": "type.googleapis.com/google.cloud.audit.AuditLog",
                    "methodName": "/Services.CreateService",
                    "resourceName": f"namespaces/{PROJECT}/{plural}/{name}",
                    "response": {
                        "@type": f"type.googleapis.com/google.cloud.run.v1.{kind}",
                        "apiVersion": "serving.knative.dev/v1",
                        "kind": kind,
                        "metadata": {"name": name, "namespace": PROJECT_NUMBER},
                        "status": {
                            "conditions": [
                                {
                                    "lastTransitionTime": rfc3339(when, 6),
                                    "status": "True",
                                    "type": "Ready",
                                }
                            ],
                        },
                    },
                    "serviceName": "run.googleapis.com",
                    "status": {
                        "message": f"Ready condition status changed to True for {kind} {name}."
                    },
                },
                "receiveTimestamp": out.receive(when, slow=True),
                "resource": resource,
                "severity": "INFO",
                "timestamp": rfc3339(when, 6),
            },
        )


# --- what the app and the tools print ------------------------------------------------------------


def prisma_header(count: int) -> list[str]:
    return [
        "Prisma schema loaded from prisma/schema.prisma",
        'Datasource "db": PostgreSQL database "spector", schema "public" at "10.12.0.3:5432"',
        f"{count} migrations found in prisma/migrations",
    ]


def applied_tree(names: Sequence[str]) -> list[str]:
    tree = ["The following migration(s) have been applied:", "migrations/"]
    for name in names:
        tree += [f"  └─ {name}/", "    └─ migration.sql"]
    return [*tree, "All migrations have been successfully applied."]


P3018 = [
    "Error: P3018",
    "A migration failed to apply. New migrations cannot be applied before the error is recovered "
    "from. Read more about how to resolve migration issues in a production database: "
    "https://pris.ly/d/migrate-resolve",
    f"Migration name: {MIG_LOWER}",
    "Database error code: 42P07",
    "Database error:",
    'ERROR: relation "session" already exists',
    'DbError { severity: "ERROR", parsed_severity: Some(Error), code: SqlState(E42P07), '
    'message: "relation \\"session\\" already exists", detail: None, hint: None, position: None, '
    "where_: None, schema: None, table: None, column: None, datatype: None, constraint: None, "
    'file: Some("tablecmds.c"), line: Some(4170), routine: Some("RenameRelation") }',
]
P3009 = [
    "Error: P3009",
    "migrate found failed migrations in the target database, new migrations will not be applied. "
    "Read more about how to resolve migration issues in a production database: "
    "https://pris.ly/d/migrate-resolve",
    f"The `{MIG_LOWER}` migration started at {FAILED_AT} failed",
]


def npm(version: str, script: str, command: str) -> list[str]:
    return [f"> spector@{version} {script}", f"> {command}"]


def server_start(version: str) -> list[str]:
    return [
        *npm(version, "start", "remix-serve ./build/server/index.js"),
        "[remix-serve] http://localhost:8080 (http://169.254.8.1:8080)",
    ]


PROBE_OK = (
    'Default STARTUP TCP probe succeeded after 1 attempt for container "spector-1" on port 8080.'
)


def stack(kind: str) -> list[str]:
    """The MissingSessionTableError trace, one entry per line as Cloud Run writes it."""
    frames = {
        "admin": [
            f"    at async PrismaSessionStorage.loadSession ({PRISMA_JS}:58:9)",
            f"    at async authStrategy ({REMIX_AUTH}/admin/authenticate.js:48:33)",
            "    at async loader$3 (file:///app/build/server/index.js:412:3)",
        ],
        "webhook": [
            f"    at async PrismaSessionStorage.loadSession ({PRISMA_JS}:58:9)",
            f"    at async authenticateWebhook ({REMIX_AUTH}/webhooks/authenticate.js:41:25)",
            "    at async action$1 (file:///app/build/server/index.js:233:37)",
        ],
        "login": [
            f"    at async PrismaSessionStorage.storeSession ({PRISMA_JS}:41:9)",
            f"    at async login ({REMIX_AUTH}/login/login.js:62:9)",
            "    at async action$5 (file:///app/build/server/index.js:688:20)",
        ],
    }[kind]
    return [MISSING_TABLE, f"    at PrismaSessionStorage.ensureReady ({PRISMA_JS}:157:19)", *frames]


# --- traffic -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Route:
    method: str
    path: str
    kind: str  # admin | webhook | login
    app_line: str | None = None


def routes(rng: random.Random, t: int) -> Route:
    shop = rng.choice(SHOPS)
    r = rng.random()
    if r < 0.55:
        q = f"?embedded=1&locale=en&shop={shop}&timestamp={t // NS}"
        return Route("GET", "/app" + q, "admin")
    if r < 0.68:
        return Route("GET", "/app/additional", "admin")
    if r < 0.78:
        return Route("POST", "/app", "admin", f"Saved settings for {shop}")
    if r < 0.88:
        return Route(
            "POST",
            "/webhooks/app/uninstalled",
            "webhook",
            f"Received app/uninstalled webhook for {shop}",
        )
    if r < 0.95:
        return Route(
            "POST",
            "/webhooks/app/scopes_update",
            "webhook",
            f"Received app/scopes_update webhook for {shop}",
        )
    return Route("POST", "/auth/login", "login")


def client_ip(rng: random.Random, kind: str) -> str:
    if kind == "webhook":
        return f"34.{rng.choice([72, 139, 148])}.{rng.randint(0, 255)}.{rng.randint(1, 254)}"
    first = rng.choice([73, 98, 172, 24, 68])
    return f"{first}.{rng.randint(0, 255)}.{rng.randint(0, 255)}.{rng.randint(1, 254)}"


def user_agent(rng: random.Random, kind: str) -> str:
    return "Shopify-Captain-Hook" if kind == "webhook" else rng.choice(BROWSERS)


def auth_line(kind: str) -> str:
    what = "webhook" if kind == "webhook" else "admin"
    return f"[shopify-app/INFO] Authenticating {what} request"


def serve_ok(inst: Instance, t: int) -> None:
    rng = inst.out.rng
    route = routes(rng, t)
    latency = min(rng.lognormvariate(-2.3, 0.6), 2.5)
    inst.request(
        t,
        route.method,
        route.path,
        200,
        latency,
        user_agent=user_agent(rng, route.kind),
        remote_ip=client_ip(rng, route.kind),
    )
    after = inst.lines(t + seconds(0.002 + rng.random() * 0.01), [auth_line(route.kind)])
    if route.app_line:
        inst.line(after + seconds(latency * 0.6), route.app_line)


def serve_error(inst: Instance, t: int) -> None:
    """A request on a broken revision: the auth line, the trace on stderr, a 500."""
    rng = inst.out.rng
    route = routes(rng, t)
    latency = 0.018 + rng.lognormvariate(-3.2, 0.5)
    inst.request(
        t,
        route.method,
        route.path,
        500,
        latency,
        user_agent=user_agent(rng, route.kind),
        remote_ip=client_ip(rng, route.kind),
        response_size=rng.choice([2431, 2436, 2440]),
    )
    after = t + seconds(0.002 + rng.random() * 0.004)
    if route.kind != "login":
        after = inst.lines(after, [auth_line(route.kind)]) + seconds(rng.uniform(0.004, 0.012))
    inst.lines(after, stack(route.kind), "stderr")


def noise(inst: Instance, t: int, which: str) -> None:
    """Unrelated trouble a healthy service has too: none of it is the incident."""
    rng = inst.out.rng
    if which == "hmac":
        inst.request(
            t,
            "POST",
            "/webhooks/app/uninstalled",
            401,
            0.011842,
            user_agent="python-requests/2.31.0",
            remote_ip="185.220.101.47",
            response_size=12,
        )
        inst.lines(
            t + seconds(0.003),
            [
                auth_line("webhook"),
                "[shopify-api/WARNING] Received a webhook request with an invalid HMAC, "
                "rejecting it | {topic: app/uninstalled}",
            ],
        )
    elif which == "scanner":
        inst.request(
            t,
            "GET",
            rng.choice(
                ["/wp-login.php", "/.env", "/vendor/phpunit/phpunit/src/Util/PHP/eval-stdin.php"]
            ),
            404,
            0.004211,
            user_agent="Mozilla/5.0 zgrab/0.x",
            remote_ip="45.148.10.88",
            response_size=3012,
        )
    elif which == "slow":
        shop = "lumiere-cafe.myshopify.com"
        inst.request(
            t,
            "GET",
            f"/app/reports?shop={shop}&range=90d",
            200,
            8.734112,
            user_agent=BROWSERS[0],
            remote_ip="73.162.40.19",
            response_size=184_220,
        )
        inst.line(t + seconds(0.004), auth_line("admin"))
        inst.line(
            t + seconds(8.71),
            '[spector] report "Café Lumière \u2013 hiver \u201925" built in 8.69s '
            "(412 orders, 3 pages of GraphQL results, throttled twice)",
        )
        inst.line(
            t + seconds(8.712),
            "[shopify-api/WARNING] GraphQL request throttled (cost 982 of 1000 available), "
            "retrying in 2s",
        )


def every(rng: random.Random, start: int, end: int, low: float, high: float) -> Iterator[int]:
    t = start + seconds(rng.uniform(0, low))
    while t < end:
        yield t
        t += seconds(rng.uniform(low, high))


def worker_jobs(out: Export, inst: Instance, start: int, end: int, timeouts: set[str]) -> None:
    """spector-worker: Cloud Scheduler runs fetch-orders every 15 minutes; some runs time out."""
    rng = out.rng
    t = start
    while t < end:
        when = t + seconds(rng.uniform(0.05, 0.9))
        inst.line(when + seconds(0.003), "[worker] job fetch-orders started")
        if rfc3339(t)[11:16] in timeouts:
            inst.request(
                when,
                "POST",
                "/jobs/fetch-orders",
                500,
                30.004 + rng.random() * 0.05,
                user_agent="Google-Cloud-Scheduler",
                remote_ip="107.178.194.12",
                host=WORKER_HOST,
                response_size=73,
            )
            inst.lines(
                when + seconds(30.002),
                [
                    "TimeoutError: job fetch-orders exceeded 30s",
                    "    at Timeout._onTimeout (/app/dist/jobs/runner.js:48:18)",
                    "    at listOnTimeout (node:internal/timers:581:17)",
                    "    at process.processTimers (node:internal/timers:519:7)",
                ],
                "stderr",
            )
        else:
            took = rng.uniform(4, 19)
            inst.request(
                when,
                "POST",
                "/jobs/fetch-orders",
                200,
                took + 0.004,
                user_agent="Google-Cloud-Scheduler",
                remote_ip="107.178.194.12",
                host=WORKER_HOST,
                response_size=2,
            )
            inst.line(
                when + seconds(took),
                f"[worker] job fetch-orders finished in {took:.1f}s ({rng.randint(3, 140)} orders)",
            )
        t += 15 * 60 * NS


# --- the story -----------------------------------------------------------------------------------


def build(seed: int = SEED) -> Export:
    rng = random.Random(seed)
    out = Export(rng)

    def new_instance(service: str, revision: str, prefix: str = "00") -> Instance:
        return Instance(out, service, revision, instance_id(rng, prefix))

    i41 = new_instance(SERVICE, REV_41, "00f46b9285")
    a42 = new_instance(SERVICE, REV_42)
    b42 = new_instance(SERVICE, REV_42)
    c42 = new_instance(SERVICE, REV_42)
    d43 = new_instance(SERVICE, REV_43)
    e44 = new_instance(SERVICE, REV_44)
    worker = new_instance(WORKER, REV_WORKER)

    # The other service, with its own unrelated failures, on both busy evenings.
    worker_jobs(
        out, worker, at("2025-12-04 20:00:00"), at("2025-12-04 23:00:00"), {"20:45", "22:15"}
    )
    worker_jobs(
        out, worker, at("2025-12-13 00:00:00"), at("2025-12-13 02:15:00"), {"00:30", "01:45"}
    )

    # 20:00-21:04:40: spector-00041-kav, healthy.
    for t in every(rng, at("2025-12-04 20:00:02"), at("2025-12-04 21:04:40"), 35, 110):
        serve_ok(i41, t)
    noise(i41, at("2025-12-04 20:17:42.318"), "hmac")
    noise(i41, at("2025-12-04 20:33:09.771"), "scanner")
    noise(i41, at("2025-12-04 20:48:27.052"), "slow")

    # 21:02: deploy 00042. Two instances run the start script; migrate deploy holds an advisory
    # lock, so the second waits for the first and then finds nothing left to apply.
    deploy(
        out,
        at("2025-12-04 21:02:00.514839"),
        REV_42,
        42,
        "4be0c9d1f2a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d",
        "1.5.0",
    )
    for inst, t in ((a42, at("2025-12-04 21:02:07.391")), (b42, at("2025-12-04 21:02:08.012"))):
        inst.lines(t, npm("1.5.0", "docker-start", "npx prisma migrate deploy; npm run start"))
    a42.lines(at("2025-12-04 21:02:10.904"), prisma_header(3), gap=0.12)
    b42.lines(at("2025-12-04 21:02:11.087"), prisma_header(3), gap=0.12)
    a42.line(at("2025-12-04 21:02:11.431"), f"Applying migration `{MIG_LOWER}`")
    a42.lines(at("2025-12-04 21:02:11.902"), applied_tree([MIG_LOWER]))
    b42.line(at("2025-12-04 21:02:12.366"), "No pending migrations to apply.")
    a42.lines(at("2025-12-04 21:02:13.210"), server_start("1.5.0"), gap=0.3)
    b42.lines(at("2025-12-04 21:02:13.655"), server_start("1.5.0"), gap=0.3)
    a42.system(at("2025-12-04 21:02:15.118"), PROBE_OK)
    b42.system(at("2025-12-04 21:02:15.540"), PROBE_OK)
    ready(out, at("2025-12-04 21:02:40.217305"), REV_42)

    # 21:03-23:00: every request to 00042 fails, every 1-3 minutes.
    for t in every(rng, at("2025-12-04 21:03:04"), at("2025-12-04 23:00:00"), 60, 180):
        serve_error(rng.choice([a42, b42]), t)

    # 2025-12-04 23:00 - 2025-12-13 00:00: 0-3 per hour from 14:00 to 03:00 UTC (US daytime and
    # evening), none at night. Sampled sparsely to keep the file small.
    # Instance b42 was scaled in at 23:20; a42 was replaced by c42 at 03:10 on the 5th.
    restart = at("2025-12-05 03:10:02.880")
    hour = at("2025-12-04 23:00:00")
    while hour < at("2025-12-13 00:00:00"):
        utc_hour = (hour // (3600 * NS)) % 24
        if utc_hour >= 14 or utc_hour < 3:
            n = rng.choices([0, 1, 2, 3], weights=[50, 38, 10, 2])[0]
            for t in sorted(hour + seconds(rng.uniform(0, 3600)) for _ in range(n)):
                if restart - 600 * NS <= t < restart + 60 * NS:
                    continue
                inst = a42 if t < restart else c42
                if t < at("2025-12-04 23:20:00") and rng.random() < 0.5:
                    inst = b42
                serve_error(inst, t)
        hour += 3600 * NS

    # 2025-12-05 03:10: c42 starts and runs migrate deploy against the hand-edited history.
    c42.lines(restart, npm("1.5.0", "docker-start", "npx prisma migrate deploy; npm run start"))
    c42.lines(at("2025-12-05 03:10:12.930"), prisma_header(3), gap=0.12)
    c42.line(at("2025-12-05 03:10:14.262"), f"Applying migration `{MIG_LOWER}`")
    c42.lines(at("2025-12-05 03:10:14.689"), P3018, "stderr")
    c42.lines(at("2025-12-05 03:10:15.402"), server_start("1.5.0"), gap=0.3)
    c42.system(at("2025-12-05 03:10:17.006"), PROBE_OK)
    serve_error(c42, at("2025-12-05 03:10:27.514"))

    # 2025-12-13 00:00: busy again; 00043 deployed at 00:41 and failing the same way.
    deploy(
        out,
        at("2025-12-13 00:41:03.207114"),
        REV_43,
        43,
        "9d3e1f20a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f",
        "1.5.1",
    )
    d43.lines(
        at("2025-12-13 00:41:11.620"),
        npm("1.5.1", "docker-start", "npx prisma migrate deploy; npm run start"),
    )
    d43.lines(at("2025-12-13 00:41:14.075"), prisma_header(4), gap=0.12)
    d43.lines(at("2025-12-13 00:41:14.731"), P3009, "stderr")
    d43.lines(at("2025-12-13 00:41:15.318"), server_start("1.5.1"), gap=0.3)
    d43.system(at("2025-12-13 00:41:16.940"), PROBE_OK)
    ready(out, at("2025-12-13 00:41:48.533901"), REV_43)
    for t in every(rng, at("2025-12-13 00:00:20"), at("2025-12-13 01:06:00"), 60, 180):
        if t < at("2025-12-13 00:42:05"):
            inst = c42
        elif t < at("2025-12-13 00:43:10"):
            inst = rng.choice([c42, d43])
        else:
            inst = d43
        serve_error(inst, t)

    # 01:05: 00044 marks the failed migration rolled back, then migrate deploy re-applies it
    # (the fix made it idempotent) and applies the fix migration.
    deploy(
        out,
        at("2025-12-13 01:05:02.846530"),
        REV_44,
        44,
        "1f7a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7f8",
        "1.5.2",
    )
    resolve = f"npx prisma migrate resolve --rolled-back {MIG_LOWER}"
    e44.lines(
        at("2025-12-13 01:05:48.207"),
        npm("1.5.2", "docker-start", f"{resolve}; npx prisma migrate deploy; npm run start"),
    )
    e44.lines(at("2025-12-13 01:05:51.388"), prisma_header(3)[:2], gap=0.12)
    e44.line(at("2025-12-13 01:05:52.940"), f"Migration {MIG_LOWER} marked as rolled back.")
    e44.lines(at("2025-12-13 01:05:55.126"), prisma_header(4), gap=0.12)
    e44.line(at("2025-12-13 01:05:55.801"), f"Applying migration `{MIG_LOWER}`")
    e44.line(at("2025-12-13 01:05:56.344"), f"Applying migration `{MIG_FIX}`")
    e44.lines(at("2025-12-13 01:06:02.915"), applied_tree([MIG_LOWER, MIG_FIX]))
    e44.lines(at("2025-12-13 01:06:04.470"), server_start("1.5.2"), gap=0.3)
    e44.system(at("2025-12-13 01:06:06.112"), PROBE_OK)
    ready(out, at("2025-12-13 01:06:20.418277"), REV_44)

    # Traffic moves to 00044 while 00043 drains: its last failure is after 00044 is Ready.
    serve_error(d43, at("2025-12-13 01:06:41.093"))
    serve_error(d43, at("2025-12-13 01:07:05.208"))  # the last MissingSessionTableError

    # 01:06:30-02:15: a healthy hour on 00044.
    serve_ok(e44, at("2025-12-13 01:06:30.412"))
    for t in every(rng, at("2025-12-13 01:06:31"), at("2025-12-13 02:15:00"), 30, 60):
        serve_ok(e44, t)
    noise(e44, at("2025-12-13 01:32:10.664"), "scanner")
    noise(e44, at("2025-12-13 01:51:37.120"), "hmac")
    noise(e44, at("2025-12-13 02:03:12.785"), "slow")
    return out


# --- output --------------------------------------------------------------------------------------


def render(seed: int = SEED) -> str:
    return build(seed).render() + "\n"


def summary(text: str) -> str:
    entries = json.loads(text)
    counts: Counter[tuple[str, str, str]] = Counter()
    for e in entries:
        labels = e["resource"]["labels"]
        counts[
            (labels["service_name"], labels["revision_name"] or "-", e["logName"].split("/")[-1])
        ] += 1
    lines = [
        f"{len(entries)} entries, {len(text.encode()):,} bytes, "
        f"{entries[-1]['timestamp']} .. {entries[0]['timestamp']}"
    ]
    for (service, revision, log), n in sorted(counts.items()):
        lines.append(f"  {service:15} {revision:25} {log.replace('%2F', '/'):40} {n:6}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "-o", "--output", type=Path, default=Path(__file__).with_name("spector-incident.json")
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="do not print the summary")
    args = parser.parse_args(argv)
    text = render()
    args.output.write_text(text, encoding="utf-8")
    if not args.quiet:
        print(f"wrote {args.output}")
        print(summary(text))
    return 0


if __name__ == "__main__":
    sys.exit(main())
