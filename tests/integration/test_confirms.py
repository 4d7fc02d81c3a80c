"""The process's confirmed publisher against the real RabbitMQ: concurrent callers share
one wait for confirms, and one caller's bad message fails only that caller."""

import os
import signal
import socket
import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from kombu import Queue
from kombu.exceptions import EncodeError

from config.celery import app as critical_app
from core.confirms import ConfirmedPublisher, Publish
from tests.processes import wait_for

pytestmark = pytest.mark.integration

CALLERS = 20


@pytest.fixture
def queue() -> Iterator[Queue]:
    name = f"test.confirms.{uuid.uuid4().hex[:8]}"
    queue = Queue(name, routing_key=name, durable=False)  # the default exchange routes by name
    with critical_app.connection_for_write() as connection:
        queue(connection.default_channel).declare()
        try:
            yield queue
        finally:
            queue(connection.default_channel).delete()


def message_count(queue: Queue) -> int:
    with critical_app.connection_for_write() as connection:
        return int(queue(connection.default_channel).queue_declare(passive=True).message_count)


def to(queue: Queue, body: Any) -> Publish:
    return lambda producer: producer.publish(body, routing_key=queue.name, serializer="json", retry=False)


def test_callers_that_come_while_a_group_is_confirmed_are_published_together_and_each_gets_its_answer(
    queue: Queue, monkeypatch: pytest.MonkeyPatch
) -> None:
    publisher = ConfirmedPublisher()
    waits: list[int] = []
    wait = publisher._wait

    def counted(tags: list[int]) -> None:
        waits.append(len(tags))
        wait(tags)

    monkeypatch.setattr(publisher, "_wait", counted)
    publisher.publish([to(queue, "first")])  # the connection is open

    with ThreadPoolExecutor(CALLERS) as pool:
        with publisher.lock:  # a group being confirmed while the callers come
            answers = [pool.submit(publisher.publish, [to(queue, n)]) for n in range(CALLERS)]
            while len(publisher.pending) < CALLERS:
                threading.Event().wait(0.01)
        results = [answer.result(timeout=30) for answer in answers]

    assert results == [[True]] * CALLERS
    assert waits == [1, CALLERS]  # the first caller's, then one for all the others
    assert message_count(queue) == CALLERS + 1


def test_a_message_that_does_not_serialize_fails_its_caller_alone(queue: Queue) -> None:
    publisher = ConfirmedPublisher()
    publisher.publish([to(queue, "first")])

    with ThreadPoolExecutor(3) as pool:
        with publisher.lock:
            good = pool.submit(publisher.publish, [to(queue, "before")])
            bad = pool.submit(publisher.publish, [to(queue, "fine"), to(queue, object())])
            later = pool.submit(publisher.publish, [to(queue, "after")])
            while len(publisher.pending) < 3:
                threading.Event().wait(0.01)
        with pytest.raises(EncodeError):
            bad.result(timeout=30)
        assert good.result(timeout=30) == [True]
        assert later.result(timeout=30) == [True]

    # The bad caller's first message went out before its second failed (a caller that
    # gets an error does not know what RabbitMQ took, and publishes again if it must).
    assert message_count(queue) == 4
    assert publisher.publish([to(queue, "next")]) == [True]


def test_a_process_forked_while_a_thread_of_its_parent_publishes_publishes_on_a_connection_of_its_own(
    queue: Queue,
) -> None:
    publisher = ConfirmedPublisher()
    publisher.publish([to(queue, "from the parent")])
    parent_connection = publisher.connection

    with publisher.lock:  # a thread of the parent publishing a group at the fork
        pid = os.fork()
        if pid == 0:  # the child: answer by exit code, skip every cleanup of the parent's
            try:
                ok = publisher.publish([to(queue, "from the child")]) == [True]
                os._exit(0 if ok and publisher.connection is not parent_connection else 1)
            except BaseException:  # noqa: BLE001 - any failure is the exit code
                os._exit(2)

    reaped: list[int] = []

    def exited() -> bool:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            reaped.append(os.waitstatus_to_exitcode(status))
        return bool(done)

    try:
        wait_for(exited, "the child published", 30)
    finally:
        if not reaped:  # stuck on the lock its parent's thread held
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
    assert reaped == [0]
    assert message_count(queue) == 2


def test_a_connection_that_broke_since_the_last_publish_is_replaced_and_the_messages_go_on_the_new_one(
    queue: Queue,
) -> None:
    publisher = ConfirmedPublisher()
    publisher.publish([to(queue, "before")])
    broken = publisher.connection
    # What a RabbitMQ restart leaves behind: a connection that looks open until used.
    broken.connection.sock.shutdown(socket.SHUT_RDWR)

    assert publisher.publish([to(queue, "after")]) == [True]

    assert publisher.connection is not broken
    assert message_count(queue) == 2
