"""How a room's in-flight message ends without an operator: its ack arrives, or its timeout fires."""

import logging
from dataclasses import dataclass

from django.db.models import Case, F, Value, When
from django.utils import timezone
from kombu.exceptions import KombuError

from rooms.exceptions import OwnerUnreachableError
from rooms.models import ChatProvider, Room, RoomMessage
from rooms.services.transitions import Outcome, Transition, advance, holds, resend, room_transition
from rooms.shards import shard_publish, sharded

logger = logging.getLogger(__name__)

Status = RoomMessage.Status


@dataclass(frozen=True)
class AckOutcome:
    applied: bool  # False: duplicate, late or unknown; nothing changed
    message_id: int | None
    # Handed to the room's shard owner, which applies it (or ignores a late or repeated
    # one) on its own, moments later: `applied` says nothing then.
    forwarded: bool = False


def room_message_ack(
    *, idempotency_key: str, provider_message_id: str = "", route: tuple[int, int] | None = None
) -> AckOutcome:
    """Apply a provider's delivery ack: release the message and send the next one.

    Idempotent: an ack for a message that is not in flight (a repeat, or one arriving
    after its timeout fired or an operator skipped it) changes nothing.

    With the sharded sequencer the ack is handed to the room's owner instead, which
    applies it under the same rules. `route` is the (shard, room) the owner put in the
    send's callback URL: with it, no database read. It is not trusted: the owner applies
    an ack only to the room whose in-flight message has that idempotency key.
    """
    if route is not None and sharded():
        shard, room_id = route
        _owner_tell(shard, room_id, idempotency_key, provider_message_id)
        return AckOutcome(applied=False, message_id=None, forwarded=True)
    # One read for the guard: the message and whether its room holds it now.
    found = (
        RoomMessage.objects.filter(idempotency_key=idempotency_key)
        .values_list("pk", "room_id", "room__in_flight_id", "room__shard")
        .first()
    )
    if found is None:
        logger.warning("ack for unknown idempotency key %s ignored", idempotency_key)
        return AckOutcome(applied=False, message_id=None)
    message_id, room_id, in_flight_id, shard = found
    if sharded():
        _owner_tell(shard, room_id, idempotency_key, provider_message_id)
        return AckOutcome(applied=False, message_id=message_id, forwarded=True)
    if in_flight_id != message_id:  # read without a lock, a "no" is final (transitions.holds)
        logger.info("room %s: ack for message %s not in flight ignored", room_id, message_id)
        return AckOutcome(applied=False, message_id=message_id)

    def decide(room: Room) -> Transition:
        if room.in_flight_id != message_id:
            return Transition(Outcome.UNCHANGED)
        now = timezone.now()
        transition = advance(room, last_ack_at=now)
        # The id the worker recorded wins; the ack's fills it in when the ack came first.
        platform_id = Case(When(provider_message_id="", then=Value(provider_message_id)),
                           default=F("provider_message_id"))
        RoomMessage.objects.filter(pk=message_id).update(
            status=Status.ACKED, acked_at=now, finished_at=now, provider_message_id=platform_id
        )
        return transition

    applied = room_transition(room_id=room_id, decide=decide).outcome is Outcome.ADVANCED
    if applied:
        logger.info("room %s: message %s acked", room_id, message_id)
    else:
        logger.info("room %s: ack for message %s not in flight ignored", room_id, message_id)
    return AckOutcome(applied=applied, message_id=message_id)


def _owner_tell(shard: int, room_id: int, key: str, provider_message_id: str) -> None:
    try:
        shard_publish(shard, {"kind": "ack", "shard": shard, "room": room_id, "key": key,
                              "provider_message_id": provider_message_id})
    except (KombuError, OSError) as exc:
        # Not taken: answer an error, so that the platform sends the webhook again.
        raise OwnerUnreachableError(
            "the ack could not be handed to the room's sequencer (RabbitMQ unreachable); send it again",
        ) from exc


# What room_message_ack_timeout reports (its task's result) for each way the room moved.
_TIMEOUT_RESULTS = {Outcome.UNCHANGED: "stale", Outcome.RESENT: "resent", Outcome.ADVANCED: "proceeded"}


def room_message_ack_timeout(*, message_id: int, attempt: int) -> str:
    """Enforce the ack timeout of one attempt: resend, or count it as sent and move on.

    Returns what happened: "stale" (acked, skipped or a later attempt), "resent", "proceeded".
    """
    message = RoomMessage.objects.select_related("room__provider").get(pk=message_id)
    provider = message.room.provider
    if not holds(message.room, message_id, attempt):  # the usual case: the ack came first
        logger.info("room %s: ack timeout of message %s attempt %s: stale", message.room_id, message_id, attempt)
        return _TIMEOUT_RESULTS[Outcome.UNCHANGED]

    def decide(room: Room) -> Transition:
        if not holds(room, message_id, attempt):
            return Transition(Outcome.UNCHANGED)
        resends = provider.timeout_policy == ChatProvider.TimeoutPolicy.RESEND
        if resends and attempt <= provider.max_resends:
            return resend(room, message_id)
        transition = advance(room, timeouts=F("timeouts") + 1)
        note = f"no ack after {attempt} attempt(s) of {provider.ack_timeout_ms} ms; counted as sent"
        RoomMessage.objects.filter(pk=message_id).update(
            status=Status.TIMED_OUT, finished_at=timezone.now(), note=note
        )
        return transition

    result = _TIMEOUT_RESULTS[room_transition(room_id=message.room_id, decide=decide).outcome]
    logger.info("room %s: ack timeout of message %s attempt %s: %s", message.room_id, message_id, attempt, result)
    return result
