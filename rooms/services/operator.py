"""Operators' actions on a stuck room (the admin's skip and retry)."""

import logging

from django.utils import timezone
from kombu.exceptions import KombuError

from rooms.exceptions import OwnerUnreachableError
from rooms.models import Room, RoomMessage
from rooms.services.enqueue import room_dispatch
from rooms.services.transitions import Outcome, Transition, advance, holds, resend, room_transition
from rooms.shards import shard_publish, sharded

logger = logging.getLogger(__name__)

Status = RoomMessage.Status


def room_message_skip(*, message_id: int) -> bool:
    """Operator: drop a queued or in-flight message; the next one goes out. False if done."""
    message = RoomMessage.objects.select_related("room").get(pk=message_id)
    if sharded():
        return _owner_ask("skip", message, (Status.QUEUED, Status.IN_FLIGHT))
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
    message = RoomMessage.objects.select_related("room").get(pk=message_id)
    if sharded():
        return _owner_ask("retry", message, (Status.IN_FLIGHT,))

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


def _owner_ask(kind: str, message: RoomMessage, statuses: tuple[str, ...]) -> bool:
    """Ask the room's shard owner to skip or retry a message; it acts moments later,
    and only if the message is still where it was (False: it is not, nothing asked)."""
    if message.status not in statuses:
        return False
    shard = message.room.shard
    try:
        shard_publish(shard, {"kind": kind, "shard": shard, "room": message.room_id, "message": message.pk})
    except (KombuError, OSError) as exc:
        raise OwnerUnreachableError(f"the {kind} could not be handed to the room's sequencer; try again") from exc
    logger.info("room %s: operator %s of message %s handed to its owner", message.room_id, kind, message.pk)
    return True
