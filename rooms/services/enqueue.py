"""Filling a room's FIFO: create the room, append a message and tell the room's owner."""

import logging
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from django.db import IntegrityError, connection, transaction
from kombu.exceptions import KombuError

from core.errors import IdempotencyKeyReusedError
from rooms.exceptions import InvalidRequestError, RoomNotFoundError
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


# Messages one call may enqueue together (a bound on one transaction's statements).
ENQUEUE_MAX = 1000


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
        (message,) = _enqueue([(room_id, body)], scope=scope, key=idempotency_key or "")
    except IntegrityError:
        # The same key enqueued concurrently: the other transaction won.
        first = room_message_for_key(scope=scope, key=idempotency_key) if idempotency_key else None
        if first is None:
            raise
        return _same_request(first, room_id=room_id, body=body)
    return message


def room_messages_enqueue(*, messages: Sequence[tuple[int, str]], caller_id: int | None = None) -> list[RoomMessage]:
    """Append several messages, (room id, body) each, to one room or many, in one
    transaction: all of them or none (RoomNotFoundError names the rooms that do not
    exist). A room's messages keep the order given, after what it already holds.

    For a producer with many messages at hand (a relay draining its own queue, an
    announcement to many rooms): one commit and one wait for RabbitMQ's confirms for all,
    where one call per message pays both each time. No idempotency keys: a caller that
    must not enqueue twice on a retry uses `room_message_enqueue` with a key per message.
    """
    if len(messages) > ENQUEUE_MAX:
        raise InvalidRequestError(
            f"at most {ENQUEUE_MAX} messages are enqueued together: split the {len(messages)}",
            detail={"messages": [f"at most {ENQUEUE_MAX}"]},
        )
    if not messages:
        return []
    return _enqueue(messages, scope=caller_scope(caller_id), key="")


def _enqueue(messages: Sequence[tuple[int, str]], *, scope: str, key: str) -> list[RoomMessage]:
    """Number and insert `messages` in one transaction; tell their owners once it commits."""
    counts = Counter(room_id for room_id, _ in messages)
    try:
        with transaction.atomic():
            # The increments take the room counters' row locks (PostgreSQL; SQLite's write
            # lock is taken at BEGIN) and hold them to the commit: sequences are gapless and
            # commit in order, which the owner relies on to know it has seen every message.
            rooms = _rooms_next_sequences(counts)
            following = {room_id: room.sequence - counts[room_id] + 1 for room_id, room in rooms.items()}
            created = []
            for room_id, body in messages:
                created.append(RoomMessage(room_id=room_id, sequence=following[room_id], body=body,
                                           request_scope=scope, request_key=key))
                following[room_id] += 1
            # Keys come back from the insert on PostgreSQL and SQLite alike.
            created = RoomMessage.objects.bulk_create(created)
            # The shards' owners hold the rooms' state: tell them once this commits.
            transaction.on_commit(lambda: _owners_tell(rooms, created))
    except IntegrityError:
        missing = set(counts) - set(Room.objects.filter(pk__in=list(counts)).values_list("pk", flat=True))
        if missing:  # deleted while this enqueue ran
            raise _rooms_not_found(missing) from None
        raise
    for message in created:
        logger.info("room %s: enqueued message %s (#%s)", message.room_id, message.pk, message.sequence)
    return created


@dataclass(frozen=True)
class _Numbered:
    """What an owner's input names of a room, and the room's last sequence now given."""

    shard: int
    provider_id: int
    recipient: str
    sequence: int


def _rooms_next_sequences(counts: Mapping[int, int]) -> dict[int, _Numbered]:
    """Add `counts[room]` to each room's counter (created by its first message), in one
    statement that also reads the rooms' rows (an enqueue's round trips are most of its
    cost). The counters' rows stay locked until the enqueue commits; the rooms' own rows,
    which their owners write at every send, are only read.

    The counters are written in the order of their room ids, so that two enqueues of
    several rooms each lock them in one order and cannot deadlock. The write comes first:
    on SQLite a transaction that reads first and then writes waits for the write lock
    while holding a read lock, which holds up every other writer's commit (SQLite's busy
    handler then sleeps, for up to tens of milliseconds each time). Counters written for
    rooms that do not exist are rolled back with the enqueue."""
    counters = connection.ops.quote_name(RoomSequence._meta.db_table)
    rooms = connection.ops.quote_name(Room._meta.db_table)
    room_pk = connection.ops.quote_name(str(Room._meta.pk.column))
    room_column = f"(SELECT {{}} FROM {rooms} WHERE {room_pk} = {counters}.room_id)"  # noqa: S608
    ordered = sorted(counts)
    with connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {counters} (room_id, last_sequence) VALUES {', '.join(['(%s, %s)'] * len(ordered))} "  # noqa: S608
            f"ON CONFLICT (room_id) DO UPDATE SET last_sequence = {counters}.last_sequence + excluded.last_sequence "
            "RETURNING room_id, last_sequence, "
            + ", ".join(room_column.format(column) for column in ("shard", "provider_id", "recipient")),
            [value for room_id in ordered for value in (room_id, counts[room_id])],
        )
        rows = cursor.fetchall()
    missing = {room_id for room_id, _, shard, _, _ in rows if shard is None}
    if missing:
        raise _rooms_not_found(missing)
    return {room_id: _Numbered(shard=shard, provider_id=provider_id, recipient=recipient, sequence=int(sequence))
            for room_id, sequence, shard, provider_id, recipient in rows}


def _rooms_not_found(missing: Iterable[int]) -> RoomNotFoundError:
    rooms = sorted(missing)
    named = f"room {rooms[0]} does not" if len(rooms) == 1 else f"rooms {', '.join(map(str, rooms))} do not"
    detail: dict[str, Any] = {"room_id": rooms[0]} if len(rooms) == 1 else {"room_ids": rooms}
    return RoomNotFoundError(f"{named} exist", detail=detail)


def _owners_tell(rooms: Mapping[int, _Numbered], messages: Sequence[RoomMessage]) -> None:
    """Hand committed messages to their rooms' shard owners."""
    inputs = []
    for message in messages:
        room = rooms[message.room_id]
        inputs.append((room.shard, {
            "kind": "enqueued", "shard": room.shard, "room": message.room_id, "provider": room.provider_id,
            "recipient": room.recipient, "message": message.pk, "sequence": message.sequence,
            "key": str(message.idempotency_key), "body": message.body,
        }))
    try:
        shard_publish(inputs)
    except (KombuError, OSError) as exc:
        # The messages are committed: failing the caller would only make it enqueue again.
        # The owner compares each room's last sequence with what it knows every few
        # seconds, and reads these messages then.
        logger.warning("messages %s not all handed to their owners, left to their periodic check: %s",
                       [message.pk for message in messages], exc)


def _same_request(first: RoomMessage, *, room_id: int, body: str) -> RoomMessage:
    """The first message of a repeated key, if the repeat asks for the same thing."""
    if first.room_id != room_id or first.body != body:
        raise IdempotencyKeyReusedError(
            f"idempotency key {first.request_key!r} was used for another message (id {first.pk}): "
            "use a new key for a new message",
            detail={"idempotency_key": first.request_key, "message": first.pk},
        )
    return first
