"""An enqueue racing a transition of the same room, run for real: two threads, two
PostgreSQL connections, one transaction waiting on the room's row lock held by the other.

The enqueue puts an idle room's message in flight in its own transaction, so it must read
the room only once it holds the room's lock: a read before it could see the room busy,
wait, and then leave its message queued behind a room the ack has just emptied.
"""

import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from django.db import connection, connections

from rooms.models import Room, RoomMessage
from rooms.services import transitions
from rooms.services.acks import room_message_ack
from rooms.services.enqueue import room_message_enqueue
from tests.unit.rooms.conftest import SentTasks

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(
        connection.vendor != "postgresql",
        reason="needs row locks: SQLite takes one lock for the whole database at BEGIN",
    ),
]

Status = RoomMessage.Status


class Worker(threading.Thread):
    """Run one service call on a connection of its own; keep its result or its error."""

    def __init__(self, call: Callable[[], Any]) -> None:
        super().__init__(daemon=True)
        self.call = call
        self.result: Any = None
        self.error: BaseException | None = None
        self.start()

    def run(self) -> None:
        try:
            self.result = self.call()
        except BaseException as exc:  # noqa: BLE001 - re-raised by outcome() in the test's thread
            self.error = exc
        finally:
            connections.close_all()

    def outcome(self) -> Any:
        self.join(30)
        assert not self.is_alive(), "the call did not finish"
        if self.error is not None:
            raise self.error
        return self.result


def wait_for_a_transaction_blocked_on_a_lock() -> None:
    """Return once another connection waits for a row lock (here: the room's)."""
    deadline = time.monotonic() + 30
    with connection.cursor() as cursor:
        while True:
            cursor.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
            )
            if cursor.fetchone()[0]:
                return
            assert time.monotonic() < deadline, "no transaction waited for the room's lock"
            time.sleep(0.01)


def pause_before(monkeypatch: pytest.MonkeyPatch, owner: object, name: str) -> tuple[threading.Event, threading.Event]:
    """Hold the first call of `owner.name` until released; (reached, release) events."""
    real = getattr(owner, name)
    reached, release = threading.Event(), threading.Event()

    def paused(*args: Any, **kwargs: Any) -> Any:
        if not reached.is_set():
            reached.set()
            assert release.wait(30), "never released"
        return real(*args, **kwargs)

    monkeypatch.setattr(owner, name, paused)
    return reached, release


def test_an_enqueue_that_waited_for_an_ack_emptying_the_room_puts_its_message_in_flight(
    room: Room, sent: SentTasks, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = room_message_enqueue(room_id=room.pk, body="a")
    # The ack holds the room's lock, about to find the FIFO empty and leave the room idle.
    reached, release = pause_before(monkeypatch, transitions, "next_queued")
    ack = Worker(lambda: room_message_ack(idempotency_key=str(first.idempotency_key)))
    assert reached.wait(30)
    enqueue = Worker(lambda: room_message_enqueue(room_id=room.pk, body="b"))
    wait_for_a_transaction_blocked_on_a_lock()

    release.set()

    assert ack.outcome().applied
    second = enqueue.outcome()
    assert Room.objects.get(pk=room.pk).in_flight_id == second.pk
    assert RoomMessage.objects.get(pk=second.pk).status == Status.IN_FLIGHT
    assert sent.calls == [(first.pk, 1), (second.pk, 1)]


def test_an_ack_that_waited_for_an_enqueue_puts_the_new_message_in_flight(
    room: Room, sent: SentTasks, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = room_message_enqueue(room_id=room.pk, body="a")
    # The enqueue holds the room's lock (its sequence taken), its message not yet written.
    reached, release = pause_before(monkeypatch, RoomMessage.objects, "create")
    enqueue = Worker(lambda: room_message_enqueue(room_id=room.pk, body="b"))
    assert reached.wait(30)
    ack = Worker(lambda: room_message_ack(idempotency_key=str(first.idempotency_key)))
    wait_for_a_transaction_blocked_on_a_lock()

    release.set()

    second = enqueue.outcome()
    assert ack.outcome().applied
    assert Room.objects.get(pk=room.pk).in_flight_id == second.pk
    assert sent.calls == [(first.pk, 1), (second.pk, 1)]
