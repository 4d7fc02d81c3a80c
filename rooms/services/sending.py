"""The send task's side of a room: may this attempt call the provider, it did, it was refused."""

import logging
from dataclasses import dataclass

from django.db.models import Case, F, Value, When
from django.utils import timezone

from rooms.models import ChatProvider, Room, RoomMessage
from rooms.services.transitions import (
    Outcome,
    Transition,
    advance,
    holds,
    room_transition,
)

logger = logging.getLogger(__name__)

Status = RoomMessage.Status


@dataclass(frozen=True)
class SendPermit:
    """What a worker needs to call the provider for one attempt."""

    room_id: int
    recipient: str
    body: str
    idempotency_key: str
    sequence: int


def room_message_send_permit(*, message_id: int, attempt: int) -> SendPermit | None:
    """Whether this attempt may still call the provider (None: acked, skipped or superseded)."""
    message = RoomMessage.objects.select_related("room").get(pk=message_id)
    room = message.room
    if not holds(room, message_id, attempt):
        return None
    return SendPermit(
        room_id=room.pk,
        recipient=room.recipient,
        body=message.body,
        idempotency_key=str(message.idempotency_key),
        sequence=message.sequence,
    )


def room_message_record_send(*, message_id: int, attempt: int, provider_message_id: str) -> int | None:
    """Record that the provider took the message; return the ack timeout to arm, in ms.

    None when the message is no longer in flight at this attempt: its ack (or an operator)
    got there first, and there is nothing to time out.
    """
    # One conditional UPDATE of the message row, with no transaction around it and no
    # room lock: every transition writes the room and its messages in one transaction,
    # so the message is `in_flight` with `attempts` = a exactly while the room holds
    # (M, a), and the database checks that guard at the write. A transition committing
    # first makes this update match nothing; one committing after it finds the send
    # recorded, and its timeout check is then stale. The provider's id is kept either way
    # (the first one: a resend is answered with the same id).
    first_id = Case(When(provider_message_id="", then=Value(provider_message_id)), default=F("provider_message_id"))
    recorded = RoomMessage.objects.filter(pk=message_id, status=Status.IN_FLIGHT, attempts=attempt).update(
        sent_at=timezone.now(), provider_message_id=first_id
    )
    if not recorded:
        RoomMessage.objects.filter(pk=message_id, provider_message_id="").update(
            provider_message_id=provider_message_id
        )
        return None
    timeout_ms: int = ChatProvider.objects.values_list("ack_timeout_ms", flat=True).get(rooms__messages=message_id)
    return timeout_ms


def room_message_give_up(*, message_id: int, attempt: int, reason: str) -> bool:
    """The provider refused the message for good: record it and move on to the next."""
    message = RoomMessage.objects.get(pk=message_id)

    def decide(room: Room) -> Transition:
        if not holds(room, message_id, attempt):
            return Transition(Outcome.UNCHANGED)
        transition = advance(room)
        RoomMessage.objects.filter(pk=message_id).update(
            status=Status.FAILED, finished_at=timezone.now(), note=reason[:255]
        )
        return transition

    gave_up = room_transition(room_id=message.room_id, decide=decide).outcome is Outcome.ADVANCED
    if gave_up:
        logger.warning("room %s: message %s failed: %s", message.room_id, message_id, reason)
    return gave_up
