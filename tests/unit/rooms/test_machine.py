"""The sharded sequencer's state machine, alone: inputs in, records and sends out.

No database or broker: the machine is pure (rooms/machine.py). The last test simulates
an owner that dies between any two of its steps, many times over, against a record kept
as the owner's group commit would keep it, and checks that every room's messages reach a
platform once each, in order.
"""

import random
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from rooms.machine import SEND_TRIES, Due, Machine, Provider, Queued, RoomState, Send, Timer

T0 = datetime(2026, 12, 2, tzinfo=UTC)
PROCEED, RESEND = 1, 2


def machine() -> Machine:
    m = Machine()
    m.providers = {PROCEED: Provider(ack_timeout_ms=1000, resends=0), RESEND: Provider(ack_timeout_ms=1000, resends=2)}
    return m


def room(room_id: int = 1, provider: int = PROCEED) -> RoomState:
    return RoomState(room_id, shard=room_id % 16, provider_id=provider, recipient=f"r{room_id}", known=0)


def message(sequence: int, room_id: int = 1) -> Queued:
    return Queued(sequence, message_id=room_id * 1000 + sequence, key=f"k{room_id}-{sequence}", body="hi")


def test_an_idle_room_puts_its_first_message_in_flight_and_queues_the_next() -> None:
    m = machine()
    assert m.enqueued(room(), message(1), T0)
    assert m.enqueued(room(), message(2), T0)

    record = m.take_record()
    assert record.sends == [Send(1, 1001, 1)]
    assert record.messages == {1001: {"status": "in_flight", "attempts": 1, "dispatched_at": T0}}
    assert record.rooms == {1: {"in_flight_id": 1001, "attempt": 1}}
    assert [q.sequence for q in m.rooms[1].queue] == [2]


def test_a_repeated_enqueue_is_ignored() -> None:
    m = machine()
    m.enqueued(room(), message(1), T0)
    m.take_record()

    assert not m.enqueued(room(), message(1), T0)
    assert not m.take_record()


def test_an_ack_ends_the_message_and_sends_the_next_and_a_repeat_changes_nothing() -> None:
    m = machine()
    for n in (1, 2):
        m.enqueued(room(), message(n), T0)
    m.sent(Send(1, 1001, 1), "chm_1", T0)
    m.take_record()

    assert m.acked(1, "k1-1", "chm_1", T0)
    record = m.take_record()
    assert record.messages[1001]["status"] == "acked"
    assert record.sends == [Send(1, 1002, 1)]

    assert not m.acked(1, "k1-1", "chm_1", T0)  # the same webhook again
    assert not m.acked(2, "k1-2", "chm_2", T0)  # an ack routed to the wrong room
    assert not m.take_record()


def test_an_ack_that_outruns_its_send_s_answer_still_records_when_it_was_sent() -> None:
    # The platform's webhook can reach the owner before the sending thread has handed
    # over the HTTP answer: the record must still say the message was sent, and by then.
    m = machine()
    m.enqueued(room(), message(1), T0)
    m.take_record()

    assert m.acked(1, "k1-1", "chm_1", T0 + timedelta(milliseconds=80))
    assert not m.sent(Send(1, 1001, 1), "chm_1", T0 + timedelta(milliseconds=90))  # the answer, late
    record = m.take_record()
    assert record.messages[1001]["status"] == "acked"
    assert record.messages[1001]["sent_at"] == T0 + timedelta(milliseconds=80)
    assert record.messages[1001]["provider_message_id"] == "chm_1"


def test_an_ack_keeps_the_send_time_its_answer_recorded() -> None:
    m = machine()
    m.enqueued(room(), message(1), T0)
    m.sent(Send(1, 1001, 1), "chm_1", T0)
    m.take_record()

    m.acked(1, "k1-1", "chm_1", T0 + timedelta(milliseconds=80))
    assert "sent_at" not in m.take_record().messages[1001]


def test_the_ack_timeout_proceeds_and_a_late_ack_is_ignored() -> None:
    m = machine()
    for n in (1, 2):
        m.enqueued(room(), message(n), T0)
    m.sent(Send(1, 1001, 1), "chm_1", T0)
    m.take_record()
    (due,) = m.timers
    assert (due.at, due.timer) == (T0 + timedelta(seconds=1), Timer.ACK_TIMEOUT)

    assert m.fire(due, due.at) == "proceeded"
    record = m.take_record()
    assert record.messages[1001]["status"] == "timed_out"
    assert record.timeouts == {1: 1}
    assert record.sends == [Send(1, 1002, 1)]
    assert not m.acked(1, "k1-1", "chm_1", due.at)


def test_the_resend_policy_sends_again_up_to_its_limit_then_proceeds() -> None:
    m = machine()
    m.enqueued(room(provider=RESEND), message(1), T0)
    outcomes = []
    for attempt in (1, 2, 3):
        m.take_record()
        m.sent(Send(1, 1001, attempt), "chm_1", T0)
        outcomes.append(m.fire(m.timers.pop(), T0))
    assert outcomes == ["resent", "resent", "proceeded"]


def test_a_timer_of_an_attempt_already_over_is_stale() -> None:
    m = machine()
    m.enqueued(room(), message(1), T0)
    m.sent(Send(1, 1001, 1), "chm_1", T0)
    m.acked(1, "k1-1", "chm_1", T0)
    m.take_record()

    assert m.fire(Due(T0, Timer.ACK_TIMEOUT, 1, 1001, 1), T0) == "stale"
    assert not m.take_record()


def test_a_refusal_fails_the_message_and_transient_errors_back_off_then_fail() -> None:
    m = machine()
    for n in (1, 2, 3):
        m.enqueued(room(), message(n), T0)
    m.refused(Send(1, 1001, 1), "400 bad recipient", T0)
    assert m.take_record().messages[1001]["status"] == "failed"

    delays = []
    for _ in range(SEND_TRIES - 1):
        assert m.failed_transiently(Send(1, 1002, 1), "503", T0)
        due = m.timers.pop()
        delays.append((due.at - T0).total_seconds())
        assert m.fire(due, due.at) == "retried"
        assert m.take_record().sends == [Send(1, 1002, 1)]
    assert delays == [1, 2, 4, 8, 16, 30, 30, 30]
    m.failed_transiently(Send(1, 1002, 1), "503", T0)
    record = m.take_record()
    assert record.messages[1002]["status"] == "failed"
    assert record.sends == [Send(1, 1003, 1)]


def test_operators_skip_a_queued_or_in_flight_message_and_retry_the_in_flight_one() -> None:
    m = machine()
    for n in (1, 2, 3):
        m.enqueued(room(), message(n), T0)
    m.take_record()

    assert m.skip(1, 1002, T0)  # queued: leaves the FIFO, nothing sent
    assert m.take_record().sends == []
    assert m.retry(1, 1001, T0)
    assert m.take_record().sends == [Send(1, 1001, 2)]
    assert m.skip(1, 1001, T0)  # in flight: the next one goes
    record = m.take_record()
    assert record.messages[1001]["status"] == "skipped"
    assert record.sends == [Send(1, 1003, 1)]
    assert not m.skip(1, 1001, T0)


def test_a_later_sequence_known_first_makes_an_earlier_one_a_repeat() -> None:
    # Why the owner reads the messages between `known` and a later sequence from the
    # database before adding it (rooms/owner.py, _catch_up): the machine takes every
    # sequence at or below `known` for a repeat.
    m = machine()
    m.enqueued(room(), message(1), T0)
    m.enqueued(room(), message(3), T0)

    assert not m.enqueued(room(), message(2), T0)
    assert [q.sequence for q in m.rooms[1].queue] == [3]


def test_read_back_a_send_in_doubt_is_looked_up_before_it_is_sent() -> None:
    m = machine()
    rows = [{"id": 1001, "sequence": 1, "idempotency_key": "k1-1", "body": "hi", "status": "in_flight",
             "attempts": 1, "sent_at": None, "provider_message_id": ""}]
    doubt = m.load(room(), rows, T0)
    assert doubt == [Send(1, 1001, 1)]
    assert m.current(doubt[0]).doubt  # type: ignore[union-attr]
    assert m.absent(doubt[0])
    assert m.take_record().sends == [Send(1, 1001, 1)]


def test_read_back_a_recorded_send_waits_for_its_ack() -> None:
    m = machine()
    rows = [{"id": 1001, "sequence": 1, "idempotency_key": "k1-1", "body": "hi", "status": "in_flight",
             "attempts": 2, "sent_at": T0, "provider_message_id": "chm_1"},
            {"id": 1002, "sequence": 2, "idempotency_key": "k1-2", "body": "hi", "status": "queued",
             "attempts": 0, "sent_at": None, "provider_message_id": ""}]
    assert m.load(room(), rows, T0) == []
    assert not m.take_record().sends
    assert [(due.message_id, due.attempt) for due in m.timers] == [(1001, 2)]
    assert m.acked(1, "k1-1", "", T0)
    assert m.take_record().sends == [Send(1, 1002, 1)]


def test_only_idle_rooms_leave_memory_the_longest_idle_first() -> None:
    m = machine()
    for room_id in (1, 2, 3, 4):
        m.enqueued(room(room_id), message(1, room_id), T0)
    m.enqueued(room(4), message(2, 4), T0)  # room 4: one in flight, one queued
    for room_id in (3, 1, 2, 4):  # rooms 3, 1, 2 go idle in that order
        m.acked(room_id, f"k{room_id}-1", "", T0)
    m.take_record()

    assert [r.room_id for r in m.evict(keep=1)] == [3, 1]
    assert sorted(m.rooms) == [2, 4]
    assert [r.room_id for r in m.evict(keep=0)] == [2]
    assert sorted(m.rooms) == [4]  # busy: never evicted
    assert m.rooms[4].flight.message.sequence == 2  # type: ignore[union-attr]


class Platform:
    """A chat platform that keeps what it took per room, by idempotency key."""

    def __init__(self) -> None:
        self.arrivals: dict[int, list[int]] = {}
        self.keys: set[str] = set()
        self.duplicates = 0

    def take(self, room_id: int, queued: Queued) -> None:
        if queued.key in self.keys:
            self.duplicates += 1
            return
        self.keys.add(queued.key)
        self.arrivals.setdefault(room_id, []).append(queued.sequence)


class Record:
    """The database as the owner's group commit leaves it."""

    def __init__(self) -> None:
        self.messages: dict[int, dict[str, Any]] = {}
        self.rooms: dict[int, dict[str, Any]] = {}

    def apply(self, record: Any) -> None:
        for message_id, changes in record.messages.items():
            self.messages[message_id].update(changes)
        for room_id, changes in record.rooms.items():
            self.rooms.setdefault(room_id, {}).update(changes)


@pytest.mark.parametrize("seed", range(40))
def test_an_owner_killed_between_any_two_steps_loses_nothing_repeats_nothing_reorders_nothing(seed: int) -> None:
    """As rooms/owner.py drives the machine: a new owner reads back only the rooms with
    messages queued or in flight; after each commit it drops idle rooms beyond a bound
    (none kept, for some seeds); an input for a room it does not hold reads that room's
    pending messages up to the input's sequence first. Some inputs come twice (a
    publish retried after its confirm was lost)."""
    rng = random.Random(seed)
    rooms, per_room = 4, 5
    idle_kept = rng.choice([0, 1, 100])
    db, platform = Record(), Platform()
    inputs: list[tuple[str, tuple[Any, ...]]] = []  # the shard queue: unacknowledged until a commit
    for sequence in range(1, per_room + 1):
        for room_id in range(1, rooms + 1):
            queued = message(sequence, room_id)
            db.messages[queued.message_id] = {"room": room_id, "sequence": sequence, "key": queued.key,
                                              "status": "queued", "attempts": 0, "sent_at": None}
            inputs.append(("enqueued", (room_id, queued)))
    for input_ in list(inputs):
        if rng.random() < 0.2:
            inputs.insert(rng.randrange(inputs.index(input_) + 1, len(inputs) + 1), input_)
    now = T0

    def pending(room_id: int, upto: int = per_room) -> list[dict[str, Any]]:
        return [{"id": message_id, "sequence": row["sequence"], "idempotency_key": row["key"], "body": "hi",
                 "status": row["status"], "attempts": row["attempts"], "sent_at": row["sent_at"],
                 "provider_message_id": ""}
                for message_id, row in sorted(db.messages.items())
                if row["room"] == room_id and row["status"] in ("queued", "in_flight") and row["sequence"] <= upto]

    def start() -> tuple[Machine, list[Send], int]:
        """A new owner takes the shard: reads the busy rooms back; every input is redelivered."""
        m = machine()
        doubt: list[Send] = []
        for room_id in range(1, rooms + 1):
            if rows := pending(room_id):
                doubt += m.load(RoomState(room_id, 0, PROCEED, f"r{room_id}", known=0), rows, now)
        return m, doubt, 0

    m, calls, delivered = start()  # calls: sends (and lookups) made after a commit
    pending_calls: list[Send] = list(calls)
    acks: list[tuple[int, str]] = []  # webhooks on their way
    for _step in range(2000):
        now += timedelta(milliseconds=rng.randint(1, 400))
        if all(row["status"] in ("acked", "timed_out") for row in db.messages.values()):
            break
        if rng.random() < 0.05:  # killed: what was not committed is gone, inputs come back
            m, pending_calls, delivered = start()
            continue
        choice = rng.random()
        if choice < 0.3 and delivered < len(inputs):
            kind, args = inputs[delivered]
            delivered += 1
            room_id, queued = args
            if room_id not in m.rooms:  # read back up to this input's sequence
                held = RoomState(room_id, 0, PROCEED, f"r{room_id}", known=queued.sequence)
                pending_calls += m.load(held, pending(room_id, queued.sequence), now)
            m.enqueued(m.rooms[room_id], queued, now)
        elif choice < 0.55 and pending_calls:
            send = pending_calls.pop(rng.randrange(len(pending_calls)))
            flight = m.current(send)
            if flight is None:
                continue
            if flight.doubt:  # a lookup
                if flight.message.key in platform.keys:
                    m.sent(send, "chm", now)
                else:
                    m.absent(send)
                continue
            platform.take(send.room_id, flight.message)
            if rng.random() < 0.9:  # 10 % of acks are lost
                acks.append((send.room_id, flight.message.key))
            if rng.random() < 0.1:  # the owner dies before it hears the answer
                m, pending_calls, delivered = start()
                continue
            m.sent(send, "chm", now)
        elif choice < 0.75 and acks:
            room_id, key = acks.pop(rng.randrange(len(acks)))
            m.acked(room_id, key, "chm", now)
        elif choice < 0.85 and m.timers:
            due = min(m.timers)
            m.timers.remove(due)
            m.fire(due, max(now, due.at))
        else:  # the group commit, then the sends it names
            record = m.take_record()
            db.apply(record)
            for send in record.sends:
                pending_calls.append(send)
            # Inputs are acknowledged only now: a restart redelivers only what came after.
            inputs, delivered = inputs[delivered:], 0
            m.evict(idle_kept)
    else:
        pytest.fail("the simulation did not finish")

    assert platform.duplicates == 0
    for room_id in range(1, rooms + 1):
        assert platform.arrivals[room_id] == list(range(1, per_room + 1))
