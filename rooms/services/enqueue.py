"""Filling a room's FIFO: create the room, append a message and tell the room's owner."""

import logging

from django.db import IntegrityError, connection, transaction
from kombu.exceptions import KombuError

from core.errors import IdempotencyKeyReusedError
from rooms.exceptions import RoomNotFoundError
from rooms.models import ChatProvider, Room, RoomMessage, RoomSequence
from rooms.selectors import caller_scope, room_message_for_key
from rooms.shards import shard_publish

logger = logging.getLogger(__name__)


def room_create(*, provider_name: str, recipient: str, owner_id: int | None = None) -> Room:
    """Create (or return) the room of one recipient on one provider, owned by an API user
    (None: the project's own code; operators reach it by permission)."""
    provider = ChatProvider.objects.get(name=provider_name)
    room, _ = Room.objects.get_or_create(provider=provider, recipient=recipient, defaults={"owner_id": owner_id})
    return room


def room_message_enqueue(
    *, room_id: int, body: str, caller_id: int | None = None, idempotency_key: str | None = None
) -> RoomMessage:
    """Append a message to the room's FIFO; it is sent once every earlier one is done.

    With an `idempotency_key`, a repeat by the same caller returns the first message and
    enqueues nothing; the same key for another room or body raises
    IdempotencyKeyReusedError. Once this returns, the message is committed: if RabbitMQ
    cannot take the owner's input now, the owner finds the message on its periodic check.
    """
    scope = caller_scope(caller_id)
    if idempotency_key:
        first = room_message_for_key(scope=scope, key=idempotency_key)
        if first is not None:
            return _same_request(first, room_id=room_id, body=body)
    try:
        with transaction.atomic():
            # The increment takes the room counter's row lock (PostgreSQL; SQLite's write
            # lock is taken at BEGIN) and holds it to the commit: sequences are gapless and
            # commit in order, which the owner relies on to know it has seen every message.
            room, sequence = _room_next_sequence(room_id)
            message = RoomMessage.objects.create(
                room_id=room_id, sequence=sequence, body=body, request_scope=scope,
                request_key=idempotency_key or "",
            )
            # The shard's owner holds the room's state: tell it once this commits.
            transaction.on_commit(lambda: _owner_tell(room, message))
    except IntegrityError:
        if not Room.objects.filter(pk=room_id).exists():  # deleted while this enqueue ran
            raise RoomNotFoundError(f"room {room_id} does not exist", detail={"room_id": room_id}) from None
        # The same key enqueued concurrently: the other transaction won.
        first = room_message_for_key(scope=scope, key=idempotency_key) if idempotency_key else None
        if first is None:
            raise
        return _same_request(first, room_id=room_id, body=body)
    logger.info("room %s: enqueued message %s (#%s)", room_id, message.pk, message.sequence)
    return message


def _room_next_sequence(room_id: int) -> tuple[Room, int]:
    """The room's fields its owner's input names, and its next message's number: the
    room's counter incremented (created at 1 by its first message), in one statement
    that also reads the room's row (an enqueue's round trips are most of its cost). The
    counter's row stays locked until the enqueue commits; the room's own row, which its
    owner writes at every send, is only read.

    The write comes first: on SQLite a transaction that reads first and then writes waits
    for the write lock while holding a read lock, which holds up every other writer's
    commit (SQLite's busy handler then sleeps, for up to tens of milliseconds each time).
    A counter written for a room that does not exist is rolled back with the enqueue."""
    counters = connection.ops.quote_name(RoomSequence._meta.db_table)
    rooms = connection.ops.quote_name(Room._meta.db_table)
    room_pk = connection.ops.quote_name(str(Room._meta.pk.column))
    room_column = f"(SELECT {{}} FROM {rooms} WHERE {room_pk} = {counters}.room_id)"  # noqa: S608
    with connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {counters} (room_id, last_sequence) VALUES (%s, 1) ON CONFLICT (room_id) "  # noqa: S608
            f"DO UPDATE SET last_sequence = {counters}.last_sequence + 1 RETURNING last_sequence, "
            + ", ".join(room_column.format(column) for column in ("shard", "provider_id", "recipient")),
            [room_id],
        )
        sequence, shard, provider_id, recipient = cursor.fetchone()
    if shard is None:
        raise RoomNotFoundError(f"room {room_id} does not exist", detail={"room_id": room_id})
    return Room(pk=room_id, shard=shard, provider_id=provider_id, recipient=recipient), int(sequence)


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
