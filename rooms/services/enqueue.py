"""Filling a room's FIFO: create the room, append a message, put the head in flight."""

import logging

from django.db import IntegrityError, transaction
from django.db.models import F
from kombu.exceptions import KombuError

from core.errors import IdempotencyKeyReusedError
from rooms.exceptions import RoomNotFoundError
from rooms.models import ChatProvider, Room, RoomMessage
from rooms.selectors import caller_scope, room_message_for_key
from rooms.services.transitions import (
    Dispatch,
    Outcome,
    Transition,
    advance,
    room_transition,
    send_after_commit,
)
from rooms.shards import shard_publish, sharded

logger = logging.getLogger(__name__)


def room_create(*, provider_name: str, recipient: str, owner_id: int | None = None) -> Room:
    """Create (or return) the room of one recipient on one provider, owned by an API user
    (None: the project's own code; operators reach it by permission)."""
    provider = ChatProvider.objects.get(name=provider_name)
    room, _ = Room.objects.get_or_create(provider=provider, recipient=recipient, defaults={"owner_id": owner_id})
    return room


def room_dispatch(*, room_id: int) -> Dispatch | None:
    """Put the room's oldest queued message in flight if the room is idle."""
    # A room seen busy needs nothing: the transition that ends its in-flight message puts
    # the next queued one in flight. (An enqueue dispatches in its own transaction, so
    # this is for a room whose dispatch was lost: the recovery sweep, an operator.)
    if Room.objects.filter(pk=room_id, in_flight__isnull=False).exists():
        return None

    def decide(room: Room) -> Transition:
        if room.in_flight_id is not None:
            return Transition(Outcome.UNCHANGED)
        return advance(room)

    return room_transition(room_id=room_id, decide=decide).send


def room_message_enqueue(
    *, room_id: int, body: str, caller_id: int | None = None, idempotency_key: str | None = None
) -> RoomMessage:
    """Append a message to the room's FIFO; it is sent once every earlier one is done.

    With an `idempotency_key`, a repeat by the same caller returns the first message and
    enqueues nothing; the same key for another room or body raises
    IdempotencyKeyReusedError. Once this returns, the message is committed: if RabbitMQ
    cannot take its send now, the recovery sweep sends it later.
    """
    scope = caller_scope(caller_id)
    if idempotency_key:
        first = room_message_for_key(scope=scope, key=idempotency_key)
        if first is not None:
            return _same_request(first, room_id=room_id, body=body)
    try:
        with transaction.atomic():
            # The increment takes the room's row lock (PostgreSQL; SQLite's write lock is
            # taken at BEGIN) before anything else, as every transition does, and holds it
            # to the commit: the room read next cannot move under this transaction.
            if not Room.objects.filter(pk=room_id).update(last_sequence=F("last_sequence") + 1):
                raise RoomNotFoundError(f"room {room_id} does not exist", detail={"room_id": room_id})
            room = Room.objects.get(pk=room_id)
            message = RoomMessage.objects.create(
                room_id=room_id, sequence=room.last_sequence, body=body, request_scope=scope,
                request_key=idempotency_key or "",
            )
            if sharded():
                # The shard's owner holds the room's state: tell it once this commits.
                transaction.on_commit(lambda: _owner_tell(room, message))
            # An idle room puts its head in flight in this same transaction: one write
            # transaction per message instead of an enqueue and then a dispatch. A busy
            # room needs nothing: the transition that ends its in-flight message takes
            # the room's lock after this commit, and sees this message queued.
            elif room.in_flight_id is None:
                dispatch = advance(room).send
                if dispatch is not None:
                    send_after_commit(dispatch)
    except IntegrityError:
        # The same key enqueued concurrently: the other transaction won.
        first = room_message_for_key(scope=scope, key=idempotency_key) if idempotency_key else None
        if first is None:
            raise
        return _same_request(first, room_id=room_id, body=body)
    logger.info("room %s: enqueued message %s (#%s)", room_id, message.pk, message.sequence)
    return message


def _owner_tell(room: Room, message: RoomMessage) -> None:
    """Hand a committed message to its room's shard owner."""
    try:
        shard_publish(room.shard, {
            "kind": "enqueued", "shard": room.shard, "room": room.pk, "provider": room.provider_id,
            "recipient": room.recipient, "message": message.pk, "sequence": message.sequence,
            "key": str(message.idempotency_key), "body": message.body,
        })
    except (KombuError, OSError) as exc:
        # The message is committed: failing the caller would only make it enqueue again.
        # The owner compares each room's last sequence with what it knows every few
        # seconds, and reads this message then.
        logger.warning("room %s: message %s not handed to its owner, left to its periodic check: %s",
                       room.pk, message.pk, exc)


def _same_request(first: RoomMessage, *, room_id: int, body: str) -> RoomMessage:
    """The first message of a repeated key, if the repeat asks for the same thing."""
    if first.room_id != room_id or first.body != body:
        raise IdempotencyKeyReusedError(
            f"idempotency key {first.request_key!r} was used for another message (id {first.pk}): "
            "use a new key for a new message",
            detail={"idempotency_key": first.request_key, "message": first.pk},
        )
    return first
