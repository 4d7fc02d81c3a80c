"""Clean-up of finished work past its retention, in bounded batches.

Only what is finished goes: a Delivery in a final state (never one pending or being
sent, nor one whose failed job is still open for replay), an outbox row RabbitMQ
confirmed (never an unpublished one), a notification the user has read. Each batch
deletes by primary key with the same conditions again, so a row that changed since it
was picked (a failed delivery re-opened by a replay) stays.
"""

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.db.models import Model, QuerySet
from django.utils import timezone

from notifications.models import Delivery, FailedJob, Notification, OutboxMessage
from notifications.services.delivery_status import FINAL_STATUSES

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class CleanupResult:
    deliveries: int
    outbox_messages: int
    notifications: int


def _delete_in_batches(queryset: QuerySet[Model], *, what: str) -> int:
    batch_size = settings.CARILLON_CLEANUP_BATCH_SIZE
    deleted = 0
    for _ in range(settings.CARILLON_CLEANUP_MAX_BATCHES):
        ids = list(queryset.order_by("pk").values_list("pk", flat=True)[:batch_size])
        if not ids:
            break
        _, per_model = queryset.filter(pk__in=ids).delete()
        deleted += per_model.get(queryset.model._meta.label, 0)
    if deleted:
        logger.info("clean-up: %d %s deleted", deleted, what)
    return deleted


def deliveries_expired(*, now: datetime) -> QuerySet[Delivery]:
    cutoff = now - timedelta(days=settings.CARILLON_RETENTION_DELIVERY_DAYS)
    return Delivery.objects.filter(status__in=FINAL_STATUSES, updated_at__lt=cutoff).exclude(
        failed_jobs__state=FailedJob.State.FAILED
    )


def outbox_messages_expired(*, now: datetime) -> QuerySet[OutboxMessage]:
    cutoff = now - timedelta(days=settings.CARILLON_RETENTION_OUTBOX_DAYS)
    return OutboxMessage.objects.filter(published_at__isnull=False, published_at__lt=cutoff)


def notifications_expired(*, now: datetime) -> QuerySet[Notification]:
    cutoff = now - timedelta(days=settings.CARILLON_RETENTION_READ_NOTIFICATION_DAYS)
    return Notification.objects.filter(read_at__isnull=False, read_at__lt=cutoff)


def cleanup_run(*, now: datetime | None = None) -> CleanupResult:
    """Delete finished rows past their retention, at most CARILLON_CLEANUP_MAX_BATCHES
    batches of CARILLON_CLEANUP_BATCH_SIZE per kind; the rest goes at the next run."""
    now = now or timezone.now()
    return CleanupResult(
        deliveries=_delete_in_batches(deliveries_expired(now=now), what="deliveries"),  # type: ignore[arg-type]
        outbox_messages=_delete_in_batches(outbox_messages_expired(now=now), what="outbox rows"),  # type: ignore[arg-type]
        notifications=_delete_in_batches(notifications_expired(now=now), what="read notifications"),  # type: ignore[arg-type]
    )
