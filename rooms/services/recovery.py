"""The recovery sweep: publish again what a crash between commit and publish lost."""

import logging
from dataclasses import dataclass
from datetime import timedelta

from django.utils import timezone

from rooms.models import Room, RoomMessage
from rooms.services.enqueue import room_dispatch
from rooms.services.transitions import Dispatch, send_after_commit

logger = logging.getLogger(__name__)

Status = RoomMessage.Status


@dataclass(frozen=True)
class RecoverReport:
    resent: list[int]  # in-flight messages whose send was published again
    dispatched: list[int]  # idle rooms whose queued head was put in flight


def room_recover(*, stalled_after_s: float) -> RecoverReport:
    """Publish again what a crash between a transition's commit and its publish lost.

    A transition commits, then publishes its send (`on_commit`). A process that dies in
    between, or a publish that fails (broker away), leaves a room in flight with no send
    or timeout on the broker, or idle with messages queued. A room in flight whose last
    attempt was handed over or sent longer ago than its ack timeout plus `stalled_after_s`
    gets that attempt's send published again: the send task checks the room still holds
    that attempt, and the platform deduplicates on the idempotency key, so a send that
    was only slow costs a deduplicated repeat, never a duplicate or a reordering.
    """
    now = timezone.now()
    cutoff = now - timedelta(seconds=stalled_after_s)
    resent: list[int] = []
    candidates = (
        RoomMessage.objects.filter(status=Status.IN_FLIGHT, dispatched_at__lt=cutoff)
        .select_related("room__provider")
        .order_by("pk")
    )
    for message in candidates:
        room = message.room
        last = max(filter(None, (message.dispatched_at, message.sent_at)))
        if room.in_flight_id != message.pk or last >= cutoff - timedelta(milliseconds=room.provider.ack_timeout_ms):
            continue
        logger.warning("room %s: message %s attempt %s stalled since %s; sending it again",
                       room.pk, message.pk, room.attempt, last.isoformat())
        send_after_commit(Dispatch(message_id=message.pk, attempt=room.attempt))
        resent.append(message.pk)
    dispatched: list[int] = []
    idle = (
        Room.objects.filter(in_flight__isnull=True, messages__status=Status.QUEUED, messages__enqueued_at__lt=cutoff)
        .values_list("pk", flat=True)
        .distinct()
    )
    for room_id in list(idle):
        if room_dispatch(room_id=room_id) is not None:
            logger.warning("room %s: idle with messages queued; its head is now in flight", room_id)
            dispatched.append(room_id)
    return RecoverReport(resent=resent, dispatched=dispatched)
