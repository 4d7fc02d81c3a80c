"""Operators' actions on a stuck room (the admin's skip and retry), applied by the room's
shard owner: the owner holds the room's state, so these only ask it."""

import logging

from kombu.exceptions import KombuError

from rooms.exceptions import OwnerUnreachableError
from rooms.models import RoomMessage
from rooms.shards import shard_publish

logger = logging.getLogger(__name__)

Status = RoomMessage.Status


def room_message_skip(*, message_id: int) -> bool:
    """Operator: drop a queued or in-flight message; the next one goes out. False if it
    has already finished (nothing asked)."""
    return _owner_ask("skip", message_id, (Status.QUEUED, Status.IN_FLIGHT))


def room_message_retry(*, message_id: int) -> bool:
    """Operator: send the in-flight message again (same idempotency key, next attempt).
    False if it is not in flight (nothing asked)."""
    return _owner_ask("retry", message_id, (Status.IN_FLIGHT,))


def _owner_ask(kind: str, message_id: int, statuses: tuple[str, ...]) -> bool:
    """Ask the room's shard owner to skip or retry a message. It acts moments later, and
    only if the message is still where it was then."""
    message = RoomMessage.objects.select_related("room").get(pk=message_id)
    if message.status not in statuses:
        return False
    shard = message.room.shard
    try:
        shard_publish([(shard, {"kind": kind, "shard": shard, "room": message.room_id, "message": message.pk})])
    except (KombuError, OSError) as exc:
        raise OwnerUnreachableError(f"the {kind} could not be handed to the room's sequencer; try again") from exc
    logger.info("room %s: operator %s of message %s handed to its owner", message.room_id, kind, message.pk)
    return True
