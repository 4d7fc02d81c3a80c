"""Publish outbox rows to RabbitMQ: at once after commit (fast path) and from the relay
process for whatever the fast path missed (slow path). Both publish with confirms and
persistent messages, so a row is marked published only once RabbitMQ has it."""

import logging
import threading
import time
import uuid
from datetime import datetime, timedelta
from functools import partial

from django.conf import settings
from django.db import connection as db_connection
from django.db import transaction
from django.db.models import F, Q
from django.utils import timezone
from kombu.exceptions import KombuError, OperationalError

from config.celery import app as critical_app
from core.confirms import ConfirmedPublisher
from core.errors import DATABASE_UNREACHABLE
from notifications.models import OutboxMessage
from notifications.queues import EVENTS_EXCHANGE, topology_declare

logger = logging.getLogger(__name__)

RELAY_BACKOFF_MAX_SECONDS = 30.0
FAST_PATH_PAUSE_SECONDS = 5.0
_fast_path_paused_until = 0.0
# Rows are published with the process's other publishes and their confirms awaited
# together: an event's task messages and envelope, or a relay pass's hundred rows, and
# those of the requests publishing at the same time, cost one wait for RabbitMQ.
_publisher = ConfirmedPublisher(declare=topology_declare)


def outbox_claim(*, ids: list[int] | None = None, limit: int = 100) -> list[OutboxMessage]:
    """Lease unpublished rows (the given ones, or the oldest) to this publisher alone.

    The claim is a conditional UPDATE with a fresh token, so two publishers (the fast
    path and a relay, or two relays) never hold the same row; a publisher that dies
    leaves its lease to expire and the row to the next relay pass.
    """
    now = timezone.now()
    free = Q(published_at__isnull=True) & (Q(claimed_until__isnull=True) | Q(claimed_until__lt=now))
    candidates = OutboxMessage.objects.filter(free)
    if ids is not None:
        candidates = candidates.filter(pk__in=ids)
    chosen = list(candidates.order_by("pk").values_list("pk", flat=True)[:limit])
    if not chosen:
        return []
    token, lease = outbox_lease(now)
    OutboxMessage.objects.filter(free, pk__in=chosen).update(claim_token=token, claimed_until=lease)
    return list(OutboxMessage.objects.filter(claim_token=token, published_at__isnull=True).order_by("pk"))


def outbox_lease(now: datetime | None = None) -> tuple[uuid.UUID, datetime]:
    """A fresh claim: its token, and when its lease ends."""
    return uuid.uuid4(), (now or timezone.now()) + timedelta(seconds=settings.CARILLON_CLAIM_LEASE_SECONDS)


def outbox_write(rows: list[OutboxMessage]) -> list[OutboxMessage]:
    """Write outbox rows in the caller's transaction and publish them once it commits
    (the fast path). They are born claimed by this fast path: no relay takes them before
    it has tried, and it needs no claim of its own (two statements fewer per event)."""
    token, lease = outbox_lease()
    for row in rows:
        row.claim_token, row.claimed_until = token, lease
    # bulk_create sets primary keys on SQLite 3.35+ and PostgreSQL.
    written = OutboxMessage.objects.bulk_create(rows)
    transaction.on_commit(partial(outbox_publish, claimed=written), robust=True)
    return written


def _publish(message: OutboxMessage, producer: object) -> None:
    payload = message.payload
    if message.kind == OutboxMessage.Kind.ENVELOPE:
        producer.publish(  # type: ignore[attr-defined]
            payload,
            exchange=EVENTS_EXCHANGE,
            routing_key=payload["type"],
            serializer="json",
            delivery_mode=2,
            declare=[EVENTS_EXCHANGE],
            message_id=payload["id"],
            retry=False,
        )
    else:
        critical_app.send_task(
            payload["task"],
            args=payload["args"],
            queue=payload["queue"],
            # One id per outbox row: a task's retries keep it (Flower and logs tie them
            # together) and its failure is recorded once under it. A replay is a new row,
            # so a replay that fails again is a new failed job, not lost under the old one.
            task_id=f"{payload['args'][0]}.{payload['args'][1]}.{message.pk}",
            producer=producer,
            retry=False,
            # Nobody waits for a delivery's result: without this, send_task first declares
            # the result backend's reply queue on every publish, and retries that forever
            # while RabbitMQ is down.
            ignore_result=True,
        )


def _give_back(messages: list[OutboxMessage], reason: str) -> None:
    """Release unpublished rows at once rather than at lease expiry: the relay takes them."""
    OutboxMessage.objects.filter(pk__in=[message.pk for message in messages], published_at__isnull=True).update(
        claim_token=None, claimed_until=None, last_error=reason
    )
    logger.warning("outbox: %d rows left for the relay: %s", len(messages), reason)


def outbox_publish_claimed(messages: list[OutboxMessage]) -> int:
    """Publish claimed rows, then wait for RabbitMQ's confirms of all of them; mark those
    it confirmed, give the others back to the relay. Return how many went."""
    if not messages:
        return 0
    published: list[int] = []
    try:
        answers = _publisher.publish([partial(_publish, message) for message in messages])
        published = [message.pk for message, confirmed in zip(messages, answers, strict=True) if confirmed]
        refused = "RabbitMQ refused the message (nack)"
    except (OperationalError, KombuError, OSError) as exc:
        # What RabbitMQ took before the error is not known: the relay publishes it
        # again, and a copy is harmless (below).
        refused = f"{type(exc).__name__}: {exc}"
    if len(published) < len(messages):
        done = set(published)
        _give_back([message for message in messages if message.pk not in done], refused)
    # What RabbitMQ confirmed, marked in one statement. A publisher that dies before it
    # leaves these rows to the relay, which publishes them again: a task run twice finds
    # its deliveries done (one per recipient), and an envelope carries the event id as
    # its message id for other services to drop a second copy (docs/architecture.md).
    if published:
        OutboxMessage.objects.filter(pk__in=published).update(
            published_at=timezone.now(), claim_token=None, claimed_until=None, attempts=F("attempts") + 1,
            last_error="",
        )
    return len(published)


def outbox_publish(*, claimed: list[OutboxMessage]) -> int:
    """The fast path, run after commit: publish these rows, which their writer claimed as
    it wrote them, now if the broker takes them.

    Rows whose claim is more than half spent (a long transaction) are claimed again
    first, so that a relay that may take them once the lease ends never publishes them
    at the same time. After a failure the fast path pauses for a few seconds and gives the
    rows to the relay, so that requests during a broker outage do not each wait for a
    connection timeout.
    """
    global _fast_path_paused_until
    if time.monotonic() < _fast_path_paused_until:
        _give_back(claimed, "the fast path is paused after a broker error")
        return 0
    half = timedelta(seconds=settings.CARILLON_CLAIM_LEASE_SECONDS / 2)
    if any(message.claimed_until is None or message.claimed_until - timezone.now() < half for message in claimed):
        claimed = outbox_claim(ids=[message.pk for message in claimed], limit=len(claimed))
    published = outbox_publish_claimed(claimed)
    if published < len(claimed):
        _fast_path_paused_until = time.monotonic() + FAST_PATH_PAUSE_SECONDS
    return published


def outbox_relay_once(*, limit: int = 100) -> tuple[int, int]:
    """One relay pass over the oldest unpublished rows. Return (claimed, published)."""
    claimed = outbox_claim(limit=limit)
    return len(claimed), outbox_publish_claimed(claimed)


def outbox_relay_forever(*, poll_seconds: float = 1.0, stop: threading.Event | None = None) -> None:
    """Run relay passes until `stop` is set, backing off while the broker or the
    database is down."""
    stop = stop or threading.Event()
    backoff = poll_seconds
    while not stop.is_set():
        try:
            claimed, published = outbox_relay_once()
        except DATABASE_UNREACHABLE as exc:
            # PostgreSQL restarting or failing over: the rows wait in it, nothing is lost.
            # Exiting would stop every process run beside this one (honcho); the next
            # pass opens a new connection instead of reusing the dead one.
            db_connection.close()
            backoff = min(backoff * 2, RELAY_BACKOFF_MAX_SECONDS)
            logger.warning("relay: database unreachable (%s); next pass in %.1fs", exc, backoff)
            stop.wait(backoff)
            continue
        if published:
            logger.info("relay: published %d outbox rows", published)
        if published < claimed:  # the broker refused: wait longer each time
            backoff = min(backoff * 2, RELAY_BACKOFF_MAX_SECONDS)
            stop.wait(backoff)
            continue
        backoff = poll_seconds
        if not claimed:  # idle; after a full pass go again at once, there may be more
            stop.wait(poll_seconds)
