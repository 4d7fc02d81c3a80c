"""Reads of the rooms app."""

from typing import Any

from django.db.models import Count

from rooms.exceptions import RoomNotFoundError
from rooms.models import Room, RoomMessage


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
