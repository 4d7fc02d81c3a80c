"""Reads of the rooms app."""

from typing import Any

from django.db.models import Count

from rooms.exceptions import RoomNotFoundError, RoomPermissionError
from rooms.models import Room, RoomMessage


def room_for_caller(*, room_id: int, user: Any, send: bool = False) -> Room:
    """The room, if `user` (a request's user) may read it (and with `send`, send into it).

    The room's owner may do both. Operators read any room with rooms.view_room and send
    into any with rooms.send_room_message. A room the caller may not read is answered as
    missing: ids are sequential, and a 403 would confirm that the room exists. A room it
    may read but not send into answers 403.
    """
    room = Room.objects.filter(pk=room_id).first()
    owner = room is not None and room.owner_id is not None and room.owner_id == user.pk
    may_send = owner or user.has_perm("rooms.send_room_message")
    may_read = owner or user.has_perm("rooms.view_room")
    if room is None or not (may_read or (send and may_send)):
        raise RoomNotFoundError(f"room {room_id} does not exist", detail={"room_id": room_id})
    if send and not may_send:
        raise RoomPermissionError(
            f"sending into room {room_id} needs the rooms.send_room_message permission, or owning the room",
            detail={"room_id": room_id},
        )
    return room


def room_message_for_key(*, scope: str, key: str) -> RoomMessage | None:
    """The message a caller already enqueued with this idempotency key, if any."""
    return RoomMessage.objects.filter(request_scope=scope, request_key=key).first()


def caller_scope(caller_id: int | None) -> str:
    """Where a caller's idempotency keys are unique: its own, or the project's ("")."""
    return f"user:{caller_id}" if caller_id is not None else ""


def room_state(*, room_id: int) -> dict[str, Any]:
    """What an operator asks of a room: in flight, queued, last ack, timeouts."""
    try:
        room = Room.objects.select_related("provider", "in_flight").get(pk=room_id)
    except Room.DoesNotExist:
        raise RoomNotFoundError(f"room {room_id} does not exist", detail={"room_id": room_id}) from None
    counts = dict(
        RoomMessage.objects.filter(room=room).values_list("status").annotate(n=Count("pk")).order_by()
    )
    in_flight = room.in_flight
    return {
        "id": room.pk,
        "provider": room.provider.name,
        "recipient": room.recipient,
        "version": room.version,
        "in_flight": None
        if in_flight is None
        else {
            "id": in_flight.pk,
            "sequence": in_flight.sequence,
            "attempt": room.attempt,
            "dispatched_at": in_flight.dispatched_at,
            "sent_at": in_flight.sent_at,
        },
        "queued": counts.get(RoomMessage.Status.QUEUED, 0),
        "counts": {status: counts.get(status, 0) for status in RoomMessage.Status.values},
        "last_ack_at": room.last_ack_at,
        "timeouts": room.timeouts,
    }


def room_messages(*, room_id: int) -> list[RoomMessage]:
    return list(RoomMessage.objects.filter(room_id=room_id).order_by("sequence"))
