"""Probes for load balancers: /healthz (the process answers), /readyz (its services do)."""

import logging
import time
from collections.abc import Callable

from django.conf import settings
from django.db import connection
from django.http import HttpRequest, JsonResponse
from django.views.decorators.http import require_GET
from kombu import Connection

from core.metrics import operator_authorized
from core.redis import redis_client

logger = logging.getLogger(__name__)

# A probe must answer well inside a load balancer's own timeout (often 5 s).
CHECK_TIMEOUT_SECONDS = 2.0


def _check_database() -> None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")


def _check_rabbitmq() -> None:
    with Connection(settings.RABBITMQ_URL, connect_timeout=CHECK_TIMEOUT_SECONDS) as broker:
        # Ready while any node of a cluster answers: each failed try moves kombu on to
        # the next node of RABBITMQ_URL, and the publishers and workers do the same.
        broker.ensure_connection(
            max_retries=max(1, len(broker.alt) - 1), interval_start=0, timeout=CHECK_TIMEOUT_SECONDS
        )


def _check_redis() -> None:
    client = redis_client(
        settings.REDIS_URL,
        socket_connect_timeout=CHECK_TIMEOUT_SECONDS,
        socket_timeout=CHECK_TIMEOUT_SECONDS,
    )
    try:
        client.ping()
    finally:
        client.close()


READINESS_CHECKS: dict[str, Callable[[], None]] = {
    "database": _check_database,
    "rabbitmq": _check_rabbitmq,
    "redis": _check_redis,
}


@require_GET
def healthz(request: HttpRequest) -> JsonResponse:
    """Answer 200 while the process can serve a request at all (and tell nothing else)."""
    return JsonResponse({"status": "ok"})


@require_GET
def readyz(request: HttpRequest) -> JsonResponse:
    """Answer 200 when every service is reachable, else 503; each check is reported.

    Anyone sees whether each check passed; only operators (staff, or the metrics bearer
    token) see why one failed and how long each took: exception texts name hosts and ports.
    """
    checks: dict[str, dict[str, object]] = {}
    for name, check in READINESS_CHECKS.items():
        started = time.perf_counter()
        try:
            check()
        except Exception as exc:  # noqa: BLE001 - any failure means "not ready", reported below
            logger.warning("readiness check %s failed: %s", name, exc)
            checks[name] = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        else:
            checks[name] = {"ok": True}
        checks[name]["ms"] = round((time.perf_counter() - started) * 1000, 1)
    ready = all(check["ok"] for check in checks.values())
    if not operator_authorized(request):
        checks = {name: {"ok": check["ok"]} for name, check in checks.items()}
    return JsonResponse(
        {"status": "ok" if ready else "unavailable", "checks": checks},
        status=200 if ready else 503,
    )
