"""Publishing to RabbitMQ with publisher confirms, the confirms of concurrent callers
awaited together.

A confirm from a durable (quorum) queue waits for the message to reach the disk: a few
milliseconds on a quiet machine, tens under load. A caller that publishes and waits for
its own confirm holds a thread that long, and a web process answering a hundred
webhooks a second with a handful of threads falls behind. So a process publishes on one
channel in confirm mode, by group commit: each caller hands over its messages, and one
caller at a time (the lock's holder) publishes everything handed over so far without
waiting, then waits for RabbitMQ's answers to all of it; the callers that came meanwhile
find their answers when it is done, or publish the next group themselves. Under load a
confirm wait is then shared by everything that arrived during the previous one.

The channel has a connection of its own (the pooled ones wait for each confirm as they
publish), used by one thread at a time: py-amqp connections are not safe to share.
"""

import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from kombu import Connection, Producer
from kombu.exceptions import OperationalError

from config.celery import app as critical_app

CONNECT_TIMEOUT_SECONDS = 2.0
# How long a publisher waits for RabbitMQ to confirm before it gives up (a broker under
# memory or disk alarm holds publishers).
CONFIRM_TIMEOUT_SECONDS = 10.0


class ConfirmTimeoutError(OperationalError):
    """RabbitMQ did not answer in time (a broker under alarm holds its publishers)."""


# One message to publish: a call that publishes it with the producer it is given.
Publish = Callable[[Producer], None]


@dataclass
class _Group:
    """One caller's messages, and RabbitMQ's answers once they are known."""

    publishes: list[Publish]
    answers: list[bool] = field(default_factory=list)  # per message: confirmed (True) or refused (False)
    error: BaseException | None = None
    done: threading.Event = field(default_factory=threading.Event)


class ConfirmedPublisher:
    def __init__(self, declare: Callable[[Connection], None] = lambda connection: None) -> None:
        """`declare` runs once on every new connection, before its first publish (a task
        published before any worker declared its queue would be unroutable, and dropped)."""
        self.declare = declare
        self._start()
        # A forked child (a Celery worker's pool process) must not use its parent's
        # socket, nor inherit a lock that a thread of the parent held at the fork.
        os.register_at_fork(after_in_child=self._start)

    def _start(self) -> None:
        self.lock = threading.Lock()  # held by the caller publishing a group
        self.handed = threading.Lock()  # guards `pending`
        self.pending: list[_Group] = []
        self._forget()

    def _forget(self) -> None:
        self.connection: Any = None
        self.producer: Producer | None = None
        self.published = 0  # the channel's delivery tags: the n-th publish is tag n
        self.waiting: set[int] = set()  # tags published and not yet answered
        self.answers: dict[int, bool] = {}  # tag -> confirmed (True) or refused (False)

    def publish(self, publishes: list[Publish]) -> list[bool]:
        """Publish these messages and wait for RabbitMQ's answers: for each, whether it
        confirmed it. A connection found broken is replaced and the messages published
        once more. Raises kombu's and the socket's errors, and OperationalError when no
        answer came in time (ConfirmTimeoutError); what RabbitMQ took before such an error
        is then not known."""
        group = _Group(publishes)
        with self.handed:
            self.pending.append(group)
        with self.lock:
            if not group.done.is_set():  # else published by the caller before this one
                with self.handed:
                    groups, self.pending = self.pending, []
                self._publish_groups(groups)
        if group.error is not None:
            raise group.error
        return group.answers

    def _publish_groups(self, groups: list[_Group]) -> None:
        try:
            reused = self.producer is not None
            try:
                self._send(groups)
            except ConfirmTimeoutError:
                raise  # a broker that holds its publishers: a new connection waits as long
            except Exception as exc:
                if not reused or not isinstance(exc, self._broken()):
                    raise
                # Once more, at once, on a new connection: one that outlived a RabbitMQ
                # restart (or a node's failure) fails its first publish. A broker really
                # away fails the new connection at once. What the broken connection took
                # before it failed may reach RabbitMQ twice: every caller's messages are
                # idempotent inputs, or carry the id a consumer drops a second copy by.
                self._reset()
                self._send([group for group in groups if group.error is None])
        except BaseException as exc:
            self._reset()
            for group in groups:
                group.error = group.error or exc
            if not isinstance(exc, Exception):
                raise
        finally:
            for group in groups:
                group.done.set()

    def _broken(self) -> tuple[type[BaseException], ...]:
        """The errors that say the connection is gone (not the caller's message)."""
        return (*self.connection.connection_errors, *self.connection.channel_errors, OSError)

    def _send(self, groups: list[_Group]) -> None:
        """Publish the groups' messages, wait for RabbitMQ's answers to all of them, and
        hand each group its own."""
        producer = self._open()
        tags: list[list[int]] = []
        for group in groups:
            group_tags: list[int] = []
            tags.append(group_tags)
            try:
                for publish in group.publishes:
                    group_tags.append(self._publish_one(producer, publish))
            except self._broken():
                raise  # the connection: every group fails with it
            except Exception as exc:  # noqa: BLE001 - this caller's message (one that does not serialize, say)
                group.error = exc
        self._wait([tag for group_tags in tags for tag in group_tags])
        for group, group_tags in zip(groups, tags, strict=True):
            group.answers = [self.answers.pop(tag) for tag in group_tags]

    def _open(self) -> Producer:
        if self.producer is not None:
            return self.producer
        self.connection = critical_app.connection_for_write(transport_options={"confirm_publish": False})
        # Fail at once when the broker is away, instead of Celery's connection retries:
        # publishers run inside a caller's request, and the relay has its own backoff.
        # Each failed try moves kombu on to the next node of a cluster (RABBITMQ_URL
        # naming several): one try per node, so a dead node is passed over at once.
        nodes = len(self.connection.alt)
        self.connection.ensure_connection(
            max_retries=max(1, nodes - 1), interval_start=0, timeout=CONNECT_TIMEOUT_SECONDS
        )
        self.declare(self.connection)
        channel = self.connection.channel()
        channel.events["basic_ack"].add(partial(self._answer, True))
        channel.events["basic_nack"].add(partial(self._answer, False))
        channel.confirm_select()
        self.published, self.waiting, self.answers = 0, set(), {}
        self.producer = Producer(channel)
        return self.producer

    def _publish_one(self, producer: Producer, publish: Publish) -> int:
        publish(producer)
        self.published += 1
        self.waiting.add(self.published)
        return self.published

    def _answer(self, confirmed: bool, tag: int, multiple: bool) -> None:
        """RabbitMQ's answer to one tag, or with `multiple` to every tag up to it."""
        answered = {t for t in self.waiting if t <= tag} if multiple else {tag} & self.waiting
        self.waiting -= answered
        self.answers.update(dict.fromkeys(answered, confirmed))

    def _wait(self, tags: list[int]) -> None:
        deadline = time.monotonic() + CONFIRM_TIMEOUT_SECONDS
        while any(tag not in self.answers for tag in tags):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise ConfirmTimeoutError(f"RabbitMQ did not confirm within {CONFIRM_TIMEOUT_SECONDS:g} s")
            try:
                self.connection.drain_events(timeout=remaining)
            except TimeoutError:
                continue  # the deadline, said as such above (a blocked broker, not a dead one)

    def _reset(self) -> None:
        """Forget the connection after an error: the next publish opens a new one."""
        if self.connection is not None:
            self.connection.collect()  # a dead socket cannot be closed politely
        self._forget()
