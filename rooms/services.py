"""Writes of the rooms app: the per-room compare-and-set state machine.

A room is idle (`in_flight` null) or holds one message in flight at some attempt. Every
transition reads the room, decides, and commits with
`UPDATE room SET ..., version = v + 1 WHERE id = ? AND version = v`, in one transaction
with the message rows it changes. When the UPDATE matches no row another process moved
the room first: read again and decide again. Sends and timeout checks are published
only after the transition commits (`on_commit`), so a rolled-back transition publishes
nothing. docs/ordered-delivery.md explains why each race ends well.
"""

import enum
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

from django.db import IntegrityError, transaction
from django.db.models import F
from django.utils import timezone
from kombu.exceptions import KombuError

from core.errors import IdempotencyKeyReusedError
from rooms import queues
from rooms.exceptions import RoomNotFoundError
from rooms.models import ChatProvider, Room, RoomMessage
from rooms.selectors import caller_scope, room_message_for_key

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


def _send_after_commit(dispatch: Dispatch) -> None:
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


def _cas(room: Room, **changes: object) -> None:
    """Write a transition if nobody moved the room since it was read, else raise RoomMovedError."""
    updated = Room.objects.filter(pk=room.pk, version=room.version).update(
        version=room.version + 1, **changes
    )
    if updated != 1:
        raise RoomMovedError(f"room {room.pk} moved past version {room.version}")


def room_transition(*, room_id: int, decide: Callable[[Room], Transition]) -> Transition:
    """Run `decide` on the locked room in one transaction, then publish its send after commit.

    `decide` checks its guard against the room as read, writes through `_cas` and the
    message rows, and returns what it did. When its `_cas` finds the room moved, the
    transaction rolls back and `decide` runs again on a fresh read.
    """
    for _ in range(MAX_CAS_ATTEMPTS):
        try:
            with transaction.atomic():
                transition = decide(_locked_room(room_id))
        except RoomMovedError:
            continue
        if transition.send is not None:
            _send_after_commit(transition.send)
        return transition
    raise RuntimeError(f"room {room_id}: no transition committed after {MAX_CAS_ATTEMPTS} tries")


def _locked_room(room_id: int) -> Room:
    """Read the room for a transition, taking its row lock first (PostgreSQL).

    The version CAS alone keeps transitions correct; the lock orders lock acquisition:
    every transaction that writes a room's messages takes the room row first, so the
    key-share locks PostgreSQL takes for the foreign keys between rooms and messages can
    never close a deadlock cycle. SQLite serializes writers anyway and ignores it.
    """
    return Room.objects.select_for_update().get(pk=room_id)


def _holds(room: Room, message_id: int, attempt: int | None = None) -> bool:
    """Whether the room, as read, has this message (at this attempt) in flight.

    Read without a lock, a False is final: a message never returns to flight once it
    left, and its attempts only grow. So a duplicate or late ack, or a timeout whose
    attempt is over, is answered without a write transaction (on SQLite every one takes
    the database's write lock; ~1 timeout check per message makes that add up).
    """
    return room.in_flight_id == message_id and (attempt is None or room.attempt == attempt)


def _next_queued(room: Room) -> RoomMessage | None:
    return (
        RoomMessage.objects.filter(room=room, status=Status.QUEUED).order_by("sequence").first()
    )


def _advance(room: Room, **room_changes: object) -> Transition:
    """Release the in-flight message and put the next queued one in flight, as one CAS."""
    head = _next_queued(room)
    _cas(room, in_flight=head, attempt=1 if head else 0, **room_changes)
    if head is None:
        return Transition(Outcome.ADVANCED)
    RoomMessage.objects.filter(pk=head.pk).update(
        status=Status.IN_FLIGHT, attempts=1, dispatched_at=timezone.now()
    )
    return Transition(Outcome.ADVANCED, send=Dispatch(message_id=head.pk, attempt=1))


def _resend(room: Room, message_id: int) -> Transition:
    """Put the in-flight message out again at its next attempt, as one CAS."""
    attempt = room.attempt + 1
    _cas(room, attempt=attempt)
    RoomMessage.objects.filter(pk=message_id).update(attempts=attempt, dispatched_at=timezone.now())
    return Transition(Outcome.RESENT, send=Dispatch(message_id=message_id, attempt=attempt))


def room_create(*, provider_name: str, recipient: str, owner_id: int | None = None) -> Room:
    """Create (or return) the room of one recipient on one provider, owned by an API user
    (None: the project's own code; operators reach it by permission)."""
    provider = ChatProvider.objects.get(name=provider_name)
    room, _ = Room.objects.get_or_create(provider=provider, recipient=recipient, defaults={"owner_id": owner_id})
    return room


def room_dispatch(*, room_id: int) -> Dispatch | None:
    """Put the room's oldest queued message in flight if the room is idle."""
    # A room seen busy needs nothing: the transition that ends its in-flight message puts
    # the next queued one in flight. That transition cannot miss a message enqueued
    # meanwhile: the enqueue updates the room row (last_sequence), so the two serialise
    # on it, and whichever commits second sees the other. This spares every message
    # enqueued behind another a write transaction.
    if Room.objects.filter(pk=room_id, in_flight__isnull=False).exists():
        return None

    def decide(room: Room) -> Transition:
        if room.in_flight_id is not None:
            return Transition(Outcome.UNCHANGED)
        return _advance(room)

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
            # The increment is atomic in the database; it does not touch the state
            # machine's columns, so it never conflicts with a transition.
            if not Room.objects.filter(pk=room_id).update(last_sequence=F("last_sequence") + 1):
                raise RoomNotFoundError(f"room {room_id} does not exist", detail={"room_id": room_id})
            sequence = Room.objects.values_list("last_sequence", flat=True).get(pk=room_id)
            message = RoomMessage.objects.create(
                room_id=room_id, sequence=sequence, body=body, request_scope=scope, request_key=idempotency_key or ""
            )
            # Robust: the message is committed whatever the dispatch meets; what it could
            # not do, the recovery sweep does.
            transaction.on_commit(lambda: room_dispatch(room_id=room_id), robust=True)
    except IntegrityError:
        # The same key enqueued concurrently: the other transaction won.
        first = room_message_for_key(scope=scope, key=idempotency_key) if idempotency_key else None
        if first is None:
            raise
        return _same_request(first, room_id=room_id, body=body)
    logger.info("room %s: enqueued message %s (#%s)", room_id, message.pk, sequence)
    return message


def _same_request(first: RoomMessage, *, room_id: int, body: str) -> RoomMessage:
    """The first message of a repeated key, if the repeat asks for the same thing."""
    if first.room_id != room_id or first.body != body:
        raise IdempotencyKeyReusedError(
            f"idempotency key {first.request_key!r} was used for another message (id {first.pk}): "
            "use a new key for a new message",
            detail={"idempotency_key": first.request_key, "message": first.pk},
        )
    return first


@dataclass(frozen=True)
class SendPermit:
    """What a worker needs to call the provider for one attempt."""

    room_id: int
    recipient: str
    body: str
    idempotency_key: str
    sequence: int


def room_message_send_permit(*, message_id: int, attempt: int) -> SendPermit | None:
    """Whether this attempt may still call the provider (None: acked, skipped or superseded)."""
    message = RoomMessage.objects.select_related("room").get(pk=message_id)
    room = message.room
    if room.in_flight_id != message_id or room.attempt != attempt:
        return None
    return SendPermit(
        room_id=room.pk,
        recipient=room.recipient,
        body=message.body,
        idempotency_key=str(message.idempotency_key),
        sequence=message.sequence,
    )


def room_message_record_send(*, message_id: int, attempt: int, provider_message_id: str) -> int | None:
    """Record that the provider took the message; return the ack timeout to arm, in ms.

    None when the message is no longer in flight at this attempt: its ack (or an operator)
    got there first, and there is nothing to time out.
    """
    with transaction.atomic():
        message = RoomMessage.objects.select_related("room__provider").get(pk=message_id)
        room = _locked_room(message.room_id)
        if not message.provider_message_id:
            RoomMessage.objects.filter(pk=message_id).update(provider_message_id=provider_message_id)
        if room.in_flight_id != message_id or room.attempt != attempt:
            return None
        RoomMessage.objects.filter(pk=message_id).update(sent_at=timezone.now())
        return message.room.provider.ack_timeout_ms


@dataclass(frozen=True)
class AckOutcome:
    applied: bool  # False: duplicate, late or unknown; nothing changed
    message_id: int | None


def room_message_ack(*, idempotency_key: str, provider_message_id: str = "") -> AckOutcome:
    """Apply a provider's delivery ack: release the message and send the next one.

    Idempotent: an ack for a message that is not in flight (a repeat, or one arriving
    after its timeout fired or an operator skipped it) changes nothing.
    """
    message = RoomMessage.objects.filter(idempotency_key=idempotency_key).only("pk", "room_id").first()
    if message is None:
        logger.warning("ack for unknown idempotency key %s ignored", idempotency_key)
        return AckOutcome(applied=False, message_id=None)
    if not _holds(Room.objects.only("in_flight_id").get(pk=message.room_id), message.pk):
        logger.info("room %s: ack for message %s not in flight ignored", message.room_id, message.pk)
        return AckOutcome(applied=False, message_id=message.pk)

    def decide(room: Room) -> Transition:
        if room.in_flight_id != message.pk:
            return Transition(Outcome.UNCHANGED)
        now = timezone.now()
        transition = _advance(room, last_ack_at=now)
        RoomMessage.objects.filter(pk=message.pk).update(status=Status.ACKED, acked_at=now, finished_at=now)
        if provider_message_id:
            RoomMessage.objects.filter(pk=message.pk, provider_message_id="").update(
                provider_message_id=provider_message_id
            )
        return transition

    applied = room_transition(room_id=message.room_id, decide=decide).outcome is Outcome.ADVANCED
    if applied:
        logger.info("room %s: message %s acked", message.room_id, message.pk)
    else:
        logger.info("room %s: ack for message %s not in flight ignored", message.room_id, message.pk)
    return AckOutcome(applied=applied, message_id=message.pk)


# What room_message_ack_timeout reports (its task's result) for each way the room moved.
_TIMEOUT_RESULTS = {Outcome.UNCHANGED: "stale", Outcome.RESENT: "resent", Outcome.ADVANCED: "proceeded"}


def room_message_ack_timeout(*, message_id: int, attempt: int) -> str:
    """Enforce the ack timeout of one attempt: resend, or count it as sent and move on.

    Returns what happened: "stale" (acked, skipped or a later attempt), "resent", "proceeded".
    """
    message = RoomMessage.objects.select_related("room__provider").get(pk=message_id)
    provider = message.room.provider
    if not _holds(message.room, message_id, attempt):  # the usual case: the ack came first
        logger.info("room %s: ack timeout of message %s attempt %s: stale", message.room_id, message_id, attempt)
        return _TIMEOUT_RESULTS[Outcome.UNCHANGED]

    def decide(room: Room) -> Transition:
        if not _holds(room, message_id, attempt):
            return Transition(Outcome.UNCHANGED)
        resend = provider.timeout_policy == ChatProvider.TimeoutPolicy.RESEND
        if resend and attempt <= provider.max_resends:
            return _resend(room, message_id)
        transition = _advance(room, timeouts=F("timeouts") + 1)
        note = f"no ack after {attempt} attempt(s) of {provider.ack_timeout_ms} ms; counted as sent"
        RoomMessage.objects.filter(pk=message_id).update(
            status=Status.TIMED_OUT, finished_at=timezone.now(), note=note
        )
        return transition

    result = _TIMEOUT_RESULTS[room_transition(room_id=message.room_id, decide=decide).outcome]
    logger.info("room %s: ack timeout of message %s attempt %s: %s", message.room_id, message_id, attempt, result)
    return result


def room_message_give_up(*, message_id: int, attempt: int, reason: str) -> bool:
    """The provider refused the message for good: record it and move on to the next."""
    message = RoomMessage.objects.get(pk=message_id)

    def decide(room: Room) -> Transition:
        if not _holds(room, message_id, attempt):
            return Transition(Outcome.UNCHANGED)
        transition = _advance(room)
        RoomMessage.objects.filter(pk=message_id).update(
            status=Status.FAILED, finished_at=timezone.now(), note=reason[:255]
        )
        return transition

    gave_up = room_transition(room_id=message.room_id, decide=decide).outcome is Outcome.ADVANCED
    if gave_up:
        logger.warning("room %s: message %s failed: %s", message.room_id, message_id, reason)
    return gave_up


def room_message_skip(*, message_id: int) -> bool:
    """Operator: drop a queued or in-flight message; the next one goes out. False if done."""
    message = RoomMessage.objects.get(pk=message_id)
    note = "skipped by an operator"

    def decide(room: Room) -> Transition:
        now = timezone.now()
        if room.in_flight_id == message_id:
            transition = _advance(room)
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
        if not _holds(room, message_id):
            return Transition(Outcome.UNCHANGED)
        return _resend(room, message_id)

    dispatch = room_transition(room_id=message.room_id, decide=decide).send
    if dispatch is None:
        # Not in flight: an idle room whose dispatch was lost gets its head sent.
        dispatch = room_dispatch(room_id=message.room_id)
    logger.info("room %s: operator retry of message %s: %s", message.room_id, message_id, dispatch)
    return dispatch is not None


@dataclass(frozen=True)
class RecoverReport:
    resent: list[int]  # in-flight messages whose send was published again
    dispatched: list[int]  # idle rooms whose queued head was put in flight


def room_recover(*, stalled_after_s: float) -> RecoverReport:
    """Publish again what a crash between a transition's commit and its publish lost.

    A transition commits, then publishes its send (`on_commit`). A process that dies in
    between, or a publish that fails (broker away), leaves a room in flight with no send
    or timeout on the broker, or idle with messages queued. A room in flight whose last
    attempt was handed over or sent longer ago than its ack timeout plus `stalled_after_s`
    gets that attempt's send published again: the send task checks the room still holds
    that attempt, and the platform deduplicates on the idempotency key, so a send that
    was only slow costs a deduplicated repeat, never a duplicate or a reordering.
    """
    now = timezone.now()
    cutoff = now - timedelta(seconds=stalled_after_s)
    resent: list[int] = []
    candidates = (
        RoomMessage.objects.filter(status=Status.IN_FLIGHT, dispatched_at__lt=cutoff)
        .select_related("room__provider")
        .order_by("pk")
    )
    for message in candidates:
        room = message.room
        last = max(filter(None, (message.dispatched_at, message.sent_at)))
        if room.in_flight_id != message.pk or last >= cutoff - timedelta(milliseconds=room.provider.ack_timeout_ms):
            continue
        logger.warning("room %s: message %s attempt %s stalled since %s; sending it again",
                       room.pk, message.pk, room.attempt, last.isoformat())
        _send_after_commit(Dispatch(message_id=message.pk, attempt=room.attempt))
        resent.append(message.pk)
    dispatched: list[int] = []
    idle = (
        Room.objects.filter(in_flight__isnull=True, messages__status=Status.QUEUED, messages__enqueued_at__lt=cutoff)
        .values_list("pk", flat=True)
        .distinct()
    )
    for room_id in list(idle):
        if room_dispatch(room_id=room_id) is not None:
            logger.warning("room %s: idle with messages queued; its head is now in flight", room_id)
            dispatched.append(room_id)
    return RecoverReport(resent=resent, dispatched=dispatched)
