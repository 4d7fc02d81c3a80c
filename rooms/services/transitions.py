"""The per-room compare-and-set state machine that every other rooms service moves through.

A room is idle (`in_flight` null) or holds one message in flight at some attempt. Every
transition reads the room, decides, and commits with
`UPDATE room SET ..., version = v + 1 WHERE id = ? AND version = v`, in one transaction
with the message rows it changes. When the UPDATE matches no row another process moved
the room first: read again and decide again. A transition returns what it decided (a
Transition), and its send is published only after it commits (`on_commit`), so a
rolled-back transition publishes nothing. docs/ordered-delivery.md explains why each
race ends well.
"""

import enum
import logging
from collections.abc import Callable
from dataclasses import dataclass

from django.db import transaction
from django.utils import timezone
from kombu.exceptions import KombuError

from rooms import queues
from rooms.models import Room, RoomMessage

logger = logging.getLogger(__name__)

Status = RoomMessage.Status

# Contention on one room is between a handful of actors (enqueue, ack, timeout, operator);
# this bound only turns a bug into an error instead of a spin.
MAX_CAS_ATTEMPTS = 50


@dataclass(frozen=True)
class Dispatch:
    """A message to hand to the provider: published as a send task after commit."""

    message_id: int
    attempt: int


class Outcome(enum.Enum):
    """How a transition left the room."""

    # The room no longer held what the input was about (a late ack, a stale timeout, an
    # operator acting on a finished message): nothing was written.
    UNCHANGED = "unchanged"
    # The in-flight message (if any) ended and the FIFO's head (if any) is now in flight.
    ADVANCED = "advanced"
    # The in-flight message stays, at its next attempt.
    RESENT = "resent"
    # A queued message left the FIFO; the room's state machine did not move.
    DEQUEUED = "dequeued"


@dataclass(frozen=True)
class Transition:
    """What a transition decided inside its transaction, for the caller to act on after commit.

    `send` is what to publish once the transaction committed: the next message
    (ADVANCED, unless the FIFO was empty), the same message again (RESENT), or nothing.
    """

    outcome: Outcome
    send: Dispatch | None = None

    def __post_init__(self) -> None:
        # Only a room that moved has something to send, and a resend always has.
        moved = self.outcome in (Outcome.ADVANCED, Outcome.RESENT)
        if (self.send is not None and not moved) or (self.outcome is Outcome.RESENT and self.send is None):
            raise ValueError(f"a {self.outcome.value} transition cannot send {self.send}")


class RoomMovedError(Exception):
    """Another process committed a transition of the room since this one read it.

    Raised out of the transaction so that it rolls back; `room_transition` then reads the
    room again and decides again. It never leaves room_transition.
    """


def send_after_commit(dispatch: Dispatch) -> None:
    """Publish the send once the current transaction commits (at once outside one)."""
    transaction.on_commit(lambda: _send(dispatch))


def _send(dispatch: Dispatch) -> None:
    try:
        queues.room_send_publish(dispatch.message_id, dispatch.attempt)
    except (KombuError, OSError) as exc:
        # The transition is committed: failing the caller now (an API request, a webhook)
        # would only make it retry what is done. The recovery sweep (room_recover)
        # publishes this send again once RabbitMQ takes it.
        logger.warning("message %s attempt %s: send not published, left to the recovery sweep: %s",
                       dispatch.message_id, dispatch.attempt, exc)


def cas(room: Room, **changes: object) -> None:
    """Write a transition if nobody moved the room since it was read, else raise RoomMovedError."""
    updated = Room.objects.filter(pk=room.pk, version=room.version).update(
        version=room.version + 1, **changes
    )
    if updated != 1:
        raise RoomMovedError(f"room {room.pk} moved past version {room.version}")


def room_transition(*, room_id: int, decide: Callable[[Room], Transition]) -> Transition:
    """Run `decide` on the locked room in one transaction, then publish its send after commit.

    `decide` checks its guard against the room as read, writes through `cas` and the
    message rows, and returns what it did. When its `cas` finds the room moved, the
    transaction rolls back and `decide` runs again on a fresh read.
    """
    for _ in range(MAX_CAS_ATTEMPTS):
        try:
            with transaction.atomic():
                transition = decide(locked_room(room_id))
        except RoomMovedError:
            continue
        if transition.send is not None:
            send_after_commit(transition.send)
        return transition
    raise RuntimeError(f"room {room_id}: no transition committed after {MAX_CAS_ATTEMPTS} tries")


def locked_room(room_id: int) -> Room:
    """Read the room for a transition, taking its row lock first (PostgreSQL).

    The version CAS alone keeps transitions correct; the lock orders lock acquisition:
    every transaction that writes a room's messages takes the room row first, so the
    key-share locks PostgreSQL takes for the foreign keys between rooms and messages can
    never close a deadlock cycle. SQLite serializes writers anyway and ignores it.
    """
    return Room.objects.select_for_update().get(pk=room_id)


def holds(room: Room, message_id: int, attempt: int | None = None) -> bool:
    """Whether the room, as read, has this message (at this attempt) in flight.

    Read without a lock, a False is final: a message never returns to flight once it
    left, and its attempts only grow. So a duplicate or late ack, or a timeout whose
    attempt is over, is answered without a write transaction (on SQLite every one takes
    the database's write lock; ~1 timeout check per message makes that add up).
    """
    return room.in_flight_id == message_id and (attempt is None or room.attempt == attempt)


def next_queued(room: Room) -> RoomMessage | None:
    return (
        RoomMessage.objects.filter(room=room, status=Status.QUEUED).order_by("sequence").first()
    )


def advance(room: Room, **room_changes: object) -> Transition:
    """Release the in-flight message and put the next queued one in flight, as one CAS."""
    head = next_queued(room)
    cas(room, in_flight=head, attempt=1 if head else 0, **room_changes)
    if head is None:
        return Transition(Outcome.ADVANCED)
    RoomMessage.objects.filter(pk=head.pk).update(
        status=Status.IN_FLIGHT, attempts=1, dispatched_at=timezone.now()
    )
    return Transition(Outcome.ADVANCED, send=Dispatch(message_id=head.pk, attempt=1))


def resend(room: Room, message_id: int) -> Transition:
    """Put the in-flight message out again at its next attempt, as one CAS."""
    attempt = room.attempt + 1
    cas(room, attempt=attempt)
    RoomMessage.objects.filter(pk=message_id).update(attempts=attempt, dispatched_at=timezone.now())
    return Transition(Outcome.RESENT, send=Dispatch(message_id=message_id, attempt=attempt))
