"""Transitions of the per-room state machine, including every race it is known to face."""

from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from django.db.models import F
from django.utils import timezone

from rooms.models import ChatProvider, Room, RoomMessage
from rooms.services import transitions
from rooms.services.acks import room_message_ack, room_message_ack_timeout
from rooms.services.enqueue import room_create, room_message_enqueue
from rooms.services.operator import room_message_retry, room_message_skip
from rooms.services.recovery import room_recover
from rooms.services.sending import (
    room_message_give_up,
    room_message_record_send,
    room_message_send_permit,
)
from tests.unit.rooms.conftest import SentTasks

pytestmark = pytest.mark.django_db(transaction=True)

Status = RoomMessage.Status


def enqueue(room: Room, *bodies: str) -> list[RoomMessage]:
    return [room_message_enqueue(room_id=room.pk, body=body) for body in bodies]


def key(message: RoomMessage) -> str:
    return str(message.idempotency_key)


def fresh(room: Room) -> Room:
    return Room.objects.get(pk=room.pk)


def status(message: RoomMessage) -> str:
    return RoomMessage.objects.get(pk=message.pk).status


def before_first_call(monkeypatch: pytest.MonkeyPatch, name: str, interfere: Callable[[], object]) -> list[bool]:
    """Run `interfere` (another process's commit) once, just before the first call of a
    state-machine step; the returned list is non-empty once it ran."""
    real = getattr(transitions, name)
    interfered: list[bool] = []

    def step(*args: Any) -> Any:
        if not interfered:
            interfered.append(True)
            interfere()
        return real(*args)

    monkeypatch.setattr(transitions, name, step)
    return interfered


def test_first_message_goes_in_flight_and_the_rest_wait(room: Room, sent: SentTasks) -> None:
    first, second, third = enqueue(room, "a", "b", "c")

    assert fresh(room).in_flight_id == first.pk
    assert sent.calls == [(first.pk, 1)]
    assert [status(m) for m in (first, second, third)] == [Status.IN_FLIGHT, Status.QUEUED, Status.QUEUED]
    assert [m.sequence for m in (first, second, third)] == [1, 2, 3]


def test_ack_puts_the_next_message_in_flight_in_order(room: Room, sent: SentTasks) -> None:
    messages = enqueue(room, "a", "b", "c")

    for message in messages:
        assert room_message_ack(idempotency_key=key(message)).applied

    assert sent.calls == [(m.pk, 1) for m in messages]
    assert [status(m) for m in messages] == [Status.ACKED] * 3
    assert fresh(room).in_flight_id is None
    assert fresh(room).last_ack_at is not None


def test_webhook_before_the_worker_records_its_send(room: Room, sent: SentTasks) -> None:
    first, second = enqueue(room, "a", "b")
    permit = room_message_send_permit(message_id=first.pk, attempt=1)
    assert permit is not None
    # The provider acks before the worker that called it has recorded the send.
    assert room_message_ack(idempotency_key=key(first), provider_message_id="chm_1").applied

    timeout = room_message_record_send(message_id=first.pk, attempt=1, provider_message_id="chm_1")

    assert timeout is None  # nothing left to time out
    assert fresh(room).in_flight_id == second.pk
    assert status(first) == Status.ACKED
    assert RoomMessage.objects.get(pk=first.pk).provider_message_id == "chm_1"


def test_a_send_recorded_for_an_attempt_already_superseded_arms_no_timeout(room: Room, sent: SentTasks) -> None:
    (first,) = enqueue(room, "a")
    # The worker of attempt 1 is still calling the provider when an operator sends
    # attempt 2: the send is recorded on the message row alone, guarded by its attempt.
    assert room_message_retry(message_id=first.pk)

    assert room_message_record_send(message_id=first.pk, attempt=1, provider_message_id="chm_1") is None
    assert RoomMessage.objects.get(pk=first.pk).sent_at is None
    assert room_message_record_send(message_id=first.pk, attempt=2, provider_message_id="chm_1") == 500
    recorded = RoomMessage.objects.get(pk=first.pk)
    assert (recorded.sent_at is not None, recorded.provider_message_id) == (True, "chm_1")


def test_an_enqueue_into_an_idle_room_whose_dispatch_was_lost_sends_the_oldest_message_first(
    room: Room, sent: SentTasks
) -> None:
    (first,) = enqueue(room, "a")
    # As if an earlier enqueue committed and its send was lost with the room left idle.
    Room.objects.filter(pk=room.pk).update(in_flight=None, attempt=0)
    RoomMessage.objects.filter(pk=first.pk).update(status=Status.QUEUED)
    sent.calls.clear()

    (second,) = enqueue(room, "b")

    assert (fresh(room).in_flight_id, status(first), status(second)) == (first.pk, Status.IN_FLIGHT, Status.QUEUED)
    assert sent.calls == [(first.pk, 1)]


def test_same_webhook_twice_changes_nothing_the_second_time(room: Room, sent: SentTasks) -> None:
    first, second, _ = enqueue(room, "a", "b", "c")
    assert room_message_ack(idempotency_key=key(first)).applied
    before = fresh(room)

    again = room_message_ack(idempotency_key=key(first))

    assert not again.applied
    after = fresh(room)
    assert (after.version, after.in_flight_id, after.attempt) == (before.version, second.pk, 1)
    assert sent.calls == [(first.pk, 1), (second.pk, 1)]


def test_webhook_after_its_timeout_fired_changes_nothing(room: Room, sent: SentTasks) -> None:
    first, second = enqueue(room, "a", "b")
    assert room_message_ack_timeout(message_id=first.pk, attempt=1) == "proceeded"
    before = fresh(room)

    late = room_message_ack(idempotency_key=key(first))

    assert not late.applied
    assert fresh(room).version == before.version
    assert fresh(room).in_flight_id == second.pk
    assert status(first) == Status.TIMED_OUT
    assert fresh(room).timeouts == 1


def test_timeout_after_the_ack_is_stale(room: Room, sent: SentTasks) -> None:
    first, second = enqueue(room, "a", "b")
    room_message_ack(idempotency_key=key(first))

    assert room_message_ack_timeout(message_id=first.pk, attempt=1) == "stale"
    assert fresh(room).in_flight_id == second.pk
    assert status(first) == Status.ACKED
    assert fresh(room).timeouts == 0


def test_resend_policy_resends_k_times_with_the_same_key_then_proceeds(
    resend_provider: ChatProvider, sent: SentTasks
) -> None:
    room = room_create(provider_name=resend_provider.name, recipient="+15550002")
    first, second = enqueue(room, "a", "b")

    outcomes = [room_message_ack_timeout(message_id=first.pk, attempt=n) for n in (1, 2, 3)]

    assert outcomes == ["resent", "resent", "proceeded"]
    assert sent.calls == [(first.pk, 1), (first.pk, 2), (first.pk, 3), (second.pk, 1)]
    done = RoomMessage.objects.get(pk=first.pk)
    assert done.status == Status.TIMED_OUT and "3 attempt(s)" in done.note
    # Every attempt of the message carries the one idempotency key.
    permits = {room_message_send_permit(message_id=first.pk, attempt=n) for n in (1, 2, 3)}
    assert permits == {None}  # all superseded now; the key lives on the message row
    assert fresh(room).in_flight_id == second.pk


def test_an_earlier_attempts_timeout_does_not_cut_a_resend_short(
    resend_provider: ChatProvider, sent: SentTasks
) -> None:
    room = room_create(provider_name=resend_provider.name, recipient="+15550003")
    (first,) = enqueue(room, "a")
    room_message_ack_timeout(message_id=first.pk, attempt=1)

    assert room_message_ack_timeout(message_id=first.pk, attempt=1) == "stale"
    assert fresh(room).attempt == 2


def test_worker_dies_after_calling_the_provider_the_redelivered_task_resends_the_same_key(
    room: Room, sent: SentTasks
) -> None:
    first, second = enqueue(room, "a", "b")
    before_crash = room_message_send_permit(message_id=first.pk, attempt=1)
    # The worker called the provider and died: nothing recorded. The broker redelivers.
    after_crash = room_message_send_permit(message_id=first.pk, attempt=1)

    assert after_crash == before_crash  # same idempotency key: the provider drops the repeat
    assert fresh(room).in_flight_id == first.pk
    room_message_ack(idempotency_key=key(first))
    # A redelivery arriving after the ack does not call the provider at all.
    assert room_message_send_permit(message_id=first.pk, attempt=1) is None
    assert fresh(room).in_flight_id == second.pk


def test_a_lost_compare_and_set_is_retried_and_applied_once(
    room: Room, sent: SentTasks, monkeypatch: pytest.MonkeyPatch
) -> None:
    first, second = enqueue(room, "a", "b")
    # Another process commits a transition between this one's read and its update.
    interfered = before_first_call(
        monkeypatch, "next_queued", lambda: Room.objects.filter(pk=room.pk).update(version=F("version") + 1)
    )

    assert room_message_ack(idempotency_key=key(first)).applied
    assert interfered
    assert fresh(room).in_flight_id == second.pk
    assert sent.calls == [(first.pk, 1), (second.pk, 1)]


def test_ack_and_timeout_racing_only_one_wins(room: Room, sent: SentTasks) -> None:
    first, second, third = enqueue(room, "a", "b", "c")

    results = [
        room_message_ack_timeout(message_id=first.pk, attempt=1),
        room_message_ack(idempotency_key=key(first)).applied,
    ]

    assert results == ["proceeded", False]
    assert fresh(room).in_flight_id == second.pk
    assert status(third) == Status.QUEUED


def test_operator_skip_of_the_in_flight_message_sends_the_next(room: Room, sent: SentTasks) -> None:
    first, second = enqueue(room, "a", "b")

    assert room_message_skip(message_id=first.pk)

    assert status(first) == Status.SKIPPED
    assert fresh(room).in_flight_id == second.pk
    assert not room_message_ack(idempotency_key=key(first)).applied


def test_operator_skip_of_a_queued_message_leaves_the_fifo(room: Room, sent: SentTasks) -> None:
    first, second, third = enqueue(room, "a", "b", "c")
    room_message_skip(message_id=second.pk)

    room_message_ack(idempotency_key=key(first))

    assert fresh(room).in_flight_id == third.pk
    assert status(second) == Status.SKIPPED


def test_operator_retry_resends_the_in_flight_message_at_the_next_attempt(room: Room, sent: SentTasks) -> None:
    (first,) = enqueue(room, "a")

    assert room_message_retry(message_id=first.pk)

    assert sent.calls == [(first.pk, 1), (first.pk, 2)]
    assert room_message_ack_timeout(message_id=first.pk, attempt=1) == "stale"
    assert fresh(room).attempt == 2


def test_provider_refusal_records_the_failure_and_moves_on(room: Room, sent: SentTasks) -> None:
    first, second = enqueue(room, "a", "b")

    assert room_message_give_up(message_id=first.pk, attempt=1, reason="400 invalid recipient")

    assert status(first) == Status.FAILED
    assert fresh(room).in_flight_id == second.pk


def test_a_refusal_of_an_attempt_an_operator_already_retried_changes_nothing(room: Room, sent: SentTasks) -> None:
    first, _second = enqueue(room, "a", "b")
    # Attempt 1 is still retrying transient errors when an operator sends attempt 2.
    assert room_message_retry(message_id=first.pk)

    assert not room_message_give_up(message_id=first.pk, attempt=1, reason="503 after every retry")

    assert status(first) == Status.IN_FLIGHT
    assert (fresh(room).in_flight_id, fresh(room).attempt) == (first.pk, 2)
    assert sent.calls == [(first.pk, 1), (first.pk, 2)]


def test_an_ack_whose_message_times_out_between_its_read_and_its_lock_changes_nothing(
    room: Room, sent: SentTasks, monkeypatch: pytest.MonkeyPatch
) -> None:
    first, second = enqueue(room, "a", "b")
    # The ack saw `first` in flight on its plain read; the timeout moves the room on
    # before the ack takes the room's lock.
    interfered = before_first_call(
        monkeypatch, "locked_room", lambda: room_message_ack_timeout(message_id=first.pk, attempt=1)
    )

    assert not room_message_ack(idempotency_key=key(first)).applied
    assert interfered
    assert status(first) == Status.TIMED_OUT
    assert (fresh(room).in_flight_id, fresh(room).timeouts) == (second.pk, 1)
    assert sent.calls == [(first.pk, 1), (second.pk, 1)]


def test_operator_skip_of_a_queued_message_leaves_the_in_flight_one_alone(room: Room, sent: SentTasks) -> None:
    first, second, _third = enqueue(room, "a", "b", "c")
    before = fresh(room)

    assert room_message_skip(message_id=second.pk)

    after = fresh(room)
    assert (after.version, after.in_flight_id, after.attempt) == (before.version, first.pk, 1)
    assert sent.calls == [(first.pk, 1)]


def test_operator_skip_or_retry_of_a_finished_message_changes_nothing(room: Room, sent: SentTasks) -> None:
    first, second = enqueue(room, "a", "b")
    room_message_ack(idempotency_key=key(first))
    before = fresh(room)

    assert not room_message_skip(message_id=first.pk)
    assert not room_message_retry(message_id=first.pk)

    assert status(first) == Status.ACKED
    assert (fresh(room).version, fresh(room).in_flight_id) == (before.version, second.pk)
    assert sent.calls == [(first.pk, 1), (second.pk, 1)]


def test_operator_retry_in_a_room_whose_dispatch_was_lost_sends_its_head(room: Room, sent: SentTasks) -> None:
    (first,) = enqueue(room, "a")
    # As if the enqueue committed and its process died before dispatching.
    Room.objects.filter(pk=room.pk).update(in_flight=None, attempt=0)
    RoomMessage.objects.filter(pk=first.pk).update(status=Status.QUEUED)
    sent.calls.clear()

    assert room_message_retry(message_id=first.pk)

    assert sent.calls == [(first.pk, 1)]
    assert (fresh(room).in_flight_id, status(first)) == (first.pk, Status.IN_FLIGHT)


def _age(message: RoomMessage, seconds: float) -> None:
    then = timezone.now() - timedelta(seconds=seconds)
    RoomMessage.objects.filter(pk=message.pk).update(enqueued_at=then, dispatched_at=then)


def test_recovery_resends_a_send_lost_between_commit_and_publish(room: Room, sent: SentTasks) -> None:
    first, second = enqueue(room, "a", "b")
    sent.calls.clear()  # the publish after the commit never happened (process died)
    _age(first, 400)

    report = room_recover(stalled_after_s=300)

    assert report.resent == [first.pk]
    assert sent.calls == [(first.pk, 1)]
    # The resent attempt goes on as usual: its ack moves the room to the next message.
    assert room_message_ack(idempotency_key=key(first)).applied
    assert fresh(room).in_flight_id == second.pk


def test_recovery_dispatches_an_idle_room_whose_dispatch_was_lost(room: Room, sent: SentTasks) -> None:
    (first,) = enqueue(room, "a")
    # As if the enqueue committed and its process died before dispatching.
    Room.objects.filter(pk=room.pk).update(in_flight=None, attempt=0)
    RoomMessage.objects.filter(pk=first.pk).update(status=Status.QUEUED)
    _age(first, 400)
    sent.calls.clear()

    report = room_recover(stalled_after_s=300)

    assert report.dispatched == [room.pk]
    assert sent.calls == [(first.pk, 1)]
    assert fresh(room).in_flight_id == first.pk


def test_recovery_leaves_a_room_that_waits_for_its_ack_alone(room: Room, sent: SentTasks) -> None:
    first, _second = enqueue(room, "a", "b")
    room_message_record_send(message_id=first.pk, attempt=1, provider_message_id="chm_1")
    # Handed to a worker long ago, but sent 100 s ago: a slow send (transient errors and
    # retries), now within its ack timeout plus the stall allowance.
    _age(first, 400)
    RoomMessage.objects.filter(pk=first.pk).update(sent_at=timezone.now() - timedelta(seconds=100))
    sent.calls.clear()

    report = room_recover(stalled_after_s=300)

    assert (report.resent, report.dispatched, sent.calls) == ([], [], [])
