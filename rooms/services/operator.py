"""Operators' actions on a stuck room (the admin's skip and retry)."""

import logging

from django.utils import timezone

from rooms.models import Room, RoomMessage
from rooms.services.enqueue import room_dispatch
from rooms.services.transitions import Outcome, Transition, advance, holds, resend, room_transition

logger = logging.getLogger(__name__)

Status = RoomMessage.Status


def room_message_skip(*, message_id: int) -> bool:
    """Operator: drop a queued or in-flight message; the next one goes out. False if done."""
    message = RoomMessage.objects.get(pk=message_id)
    note = "skipped by an operator"

    def decide(room: Room) -> Transition:
        now = timezone.now()
        if room.in_flight_id == message_id:
            transition = advance(room)
            RoomMessage.objects.filter(pk=message_id).update(status=Status.SKIPPED, finished_at=now, note=note)
            return transition
        # A queued message leaves the FIFO by its own conditional update: the room row
        # does not name it, so there is no CAS to take.
        dequeued = RoomMessage.objects.filter(pk=message_id, status=Status.QUEUED).update(
            status=Status.SKIPPED, finished_at=now, note=note
        )
        return Transition(Outcome.DEQUEUED if dequeued else Outcome.UNCHANGED)

    skipped = room_transition(room_id=message.room_id, decide=decide).outcome is not Outcome.UNCHANGED
    logger.info("room %s: operator skip of message %s: %s", message.room_id, message_id, skipped)
    return skipped


def room_message_retry(*, message_id: int) -> bool:
    """Operator: send the in-flight message again (same idempotency key, next attempt)."""
    message = RoomMessage.objects.get(pk=message_id)

    def decide(room: Room) -> Transition:
        if not holds(room, message_id):
            return Transition(Outcome.UNCHANGED)
        return resend(room, message_id)

    dispatch = room_transition(room_id=message.room_id, decide=decide).send
    if dispatch is None:
        # Not in flight: an idle room whose dispatch was lost gets its head sent.
        dispatch = room_dispatch(room_id=message.room_id)
    logger.info("room %s: operator retry of message %s: %s", message.room_id, message_id, dispatch)
    return dispatch is not None
