"""Broadcasts: one subscriber's work for an event addressed to an audience, planned into
chunks of recipients.

The planner reads the audience's user ids a page at a time (ascending, after the last id
planned) and writes each page as a DeliveryChunk together with the outbox row of the task
that sends it, in one transaction: a chunk exists exactly when its task is due to be
published, and the relay publishes every row exactly once. A planner that dies (its task
redelivered) resumes after the broadcast's cursor; two planners at once cannot write the
same chunk (one chunk per index), so the loser stops and leaves the rest to the winner.
"""

import logging

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from notifications.audiences import AudienceSpec, recipient_id_pages
from notifications.events import event_type_get
from notifications.models import Broadcast, Delivery, DeliveryChunk, Event, OutboxMessage
from notifications.queues import channel_queue_name, chunk_task_name
from notifications.relay import outbox_write
from notifications.subscribers import Subscriber

logger = logging.getLogger(__name__)


def broadcast_plan(*, event: Event, subscriber: Subscriber) -> Broadcast:
    """Put every recipient of the event's audience in a chunk, each chunk's task in the
    outbox; resume where an earlier planner stopped. Stops early if the event is cancelled."""
    broadcast, _ = Broadcast.objects.get_or_create(
        event=event, subscriber=subscriber.name, defaults={"channel": subscriber.channel}
    )
    lane = event_type_get(name=event.type, version=event.version).lane
    queue = channel_queue_name(subscriber.channel, lane)
    spec = AudienceSpec(**(event.audience or {}))
    size = settings.CARILLON_BROADCAST_CHUNK_SIZE
    while broadcast.planned_at is None:
        if Event.objects.filter(pk=event.pk, cancelled_at__isnull=False).exists():
            logger.info("broadcast %s: event cancelled, planning stops at chunk %d", broadcast.pk, broadcast.chunks)
            break
        page = next(recipient_id_pages(spec, scope=event.idempotency_scope, size=size, after=broadcast.cursor), None)
        try:
            broadcast = _chunk_write(broadcast, page, queue=queue)
        except IntegrityError:
            # Another planner wrote this chunk first: it carries on from there.
            logger.info("broadcast %s: chunk %d written by another planner", broadcast.pk, broadcast.chunks)
            broadcast.refresh_from_db()
            break
    return broadcast


def _chunk_write(broadcast: Broadcast, page: list[int] | None, *, queue: str) -> Broadcast:
    """Write one page as the next chunk with its outbox row (or, with no page left, mark
    the broadcast planned), in one transaction; publish the row after commit."""
    with transaction.atomic():
        if page is None:
            Broadcast.objects.filter(pk=broadcast.pk).update(planned_at=timezone.now())
            broadcast.planned_at = timezone.now()
            logger.info("broadcast %s: %d recipients in %d chunks", broadcast.pk, broadcast.recipients, broadcast.chunks)
            return broadcast
        index = broadcast.chunks
        DeliveryChunk.objects.create(broadcast=broadcast, index=index, user_ids=page)
        args = [str(broadcast.event_id), broadcast.subscriber, index]
        outbox_write([OutboxMessage(
            event_id=broadcast.event_id,
            kind=OutboxMessage.Kind.TASK,
            subscriber=broadcast.subscriber,
            queue=queue,
            payload={"task": chunk_task_name(broadcast.channel), "args": args, "queue": queue},
        )])
        broadcast.cursor, broadcast.chunks, broadcast.recipients = page[-1], index + 1, broadcast.recipients + len(page)
        broadcast.save(update_fields=["cursor", "chunks", "recipients"])
    return broadcast


def event_cancel(*, event_id: str) -> tuple[Event, int]:
    """Stop an event's deliveries that have not been sent: planning stops, chunks not yet
    sent are not sent, pending deliveries become cancelled. Those under way finish.
    Cancelling twice changes nothing more; answer the event and how many were cancelled."""
    now = timezone.now()
    with transaction.atomic():
        Event.objects.filter(pk=event_id, cancelled_at__isnull=True).update(cancelled_at=now)
        cancelled = Delivery.objects.filter(event_id=event_id, status=Delivery.Status.PENDING).update(
            status=Delivery.Status.CANCELLED, last_error="the event was cancelled"
        )
    event = Event.objects.get(pk=event_id)
    logger.info("event %s cancelled: %d pending deliveries will not be sent", event_id, cancelled)
    return event, cancelled
