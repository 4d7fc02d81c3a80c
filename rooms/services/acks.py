"""A chat platform's delivery ack, handed to the shard owner of its room."""

import logging
from dataclasses import dataclass

from kombu.exceptions import KombuError

from rooms.exceptions import OwnerUnreachableError
from rooms.models import RoomMessage
from rooms.shards import shard_publish

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class AckOutcome:
    # Handed to the room's shard owner, which applies it, or ignores a repeated or late
    # one, moments later. False: no message has this key; nothing was done.
    forwarded: bool
    message_id: int | None


def room_message_ack(
    *, idempotency_key: str, provider_message_id: str = "", route: tuple[int, int] | None = None
) -> AckOutcome:
    """Hand a delivery ack to the owner of its room's shard.

    `route` is the (shard, room) the owner put in the send's callback URL: with it, no
    database read. It is not trusted: an owner applies an ack only to the room whose
    in-flight message has that idempotency key. Without it, the message is looked up by
    its key. Raises OwnerUnreachableError when RabbitMQ does not take the ack.
    """
    message_id = None
    if route is None:
        found = RoomMessage.objects.filter(idempotency_key=idempotency_key).values_list(
            "pk", "room__shard", "room_id").first()
        if found is None:
            logger.warning("ack for unknown idempotency key %s ignored", idempotency_key)
            return AckOutcome(forwarded=False, message_id=None)
        message_id, *route_found = found
        route = (route_found[0], route_found[1])
    shard, room_id = route
    try:
        shard_publish([(shard, {"kind": "ack", "shard": shard, "room": room_id, "key": idempotency_key,
                                "provider_message_id": provider_message_id})])
    except (KombuError, OSError) as exc:
        # Not taken: answer an error, so that the platform sends the webhook again.
        raise OwnerUnreachableError(
            "the ack could not be handed to the room's sequencer (RabbitMQ unreachable); send it again",
        ) from exc
    return AckOutcome(forwarded=True, message_id=message_id)
