"""Transactional deliveries taken several at a time by the worker that holds them.

A Celery task costs its worker more CPU than a transactional delivery's own work (the
message handed to a pool process and back, a request, task events). Under load a worker
holds several delivery messages at once (its prefetch), and sending them together costs
one read of their events and users, one insert and one record of the sends
(`deliveries_send_together`). So the transactional delivery tasks are consumed by this
strategy instead of Celery's:

- A first attempt (not a retry, not redelivered, not put off) waits in the worker's main
  process until a pool process is free, with the others that arrive meanwhile, at most
  CARILLON_DELIVERY_BATCH_MAX. At low load a message finds a free process and goes at
  once, alone: nothing waits for a batch to fill.
- The batch runs in a pool process; each message it finished is acknowledged.
- Every other message, and each one the batch did not finish (a failure, an audience,
  anything but a plain send), runs as the ordinary task, alone, with its retries,
  failed job and dead-lettering. A pool process killed mid-batch sends its messages
  the same way: each alone, so a message that kills its process does so on its own and
  reaches the delivery limit without taking the others with it.

While held, a message shows in `celery inspect reserved`, and while its batch runs in
`inspect active`. Flower shows no task events for a batch.
"""

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from celery import Celery
from celery.worker import state
from celery.worker.consumer import Consumer
from celery.worker.strategy import default as default_strategy
from django.conf import settings
from django.db import close_old_connections
from kombu.message import Message

from notifications.services.deliveries import deliveries_send_together
from notifications.tasks.base import DeliveryTask

logger = logging.getLogger(__name__)


@dataclass(eq=False)
class _Held:
    """A delivery message in the worker's hands, waiting for or in a batch; shaped like the
    requests Celery lists for `inspect`."""

    id: str
    name: str
    work: tuple[str, str]
    ack: Callable[[], Any]
    alone: Callable[[], Any]  # hand it to Celery's own strategy: the ordinary task
    hostname: str

    def info(self, safe: bool = False) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "args": list(self.work), "kwargs": {}, "hostname": self.hostname,
                "acknowledged": False, "delivery_info": {}, "time_start": None, "worker_pid": None}


@dataclass(eq=False)
class _Batches:
    """One worker's held messages and the batches it has running (shared by every
    transactional delivery task, so a batch may mix channels)."""

    consumer: Consumer
    held: list[_Held] = field(default_factory=list)
    running: int = 0
    started: int = 0  # batches so far, to name each in the log

    def add(self, held: _Held) -> None:
        state.task_reserved(held)
        self.held.append(held)
        self.start()

    def start(self) -> None:
        """Hand what is held to a free pool process, if there is one."""
        if not self.held or self.running >= self.consumer.pool.num_processes:
            return
        batch, self.held = self.held[: settings.CARILLON_DELIVERY_BATCH_MAX], self.held[settings.CARILLON_DELIVERY_BATCH_MAX :]
        for held in batch:
            state.task_accepted(held)
        self.running += 1
        self.started += 1
        self.consumer.pool.apply_async(
            _send_together, args=([held.work for held in batch], self.started),
            callback=lambda done: self._finished(batch, done),
            error_callback=lambda error: self._finished(batch, [False] * len(batch), error),
        )

    def _finished(self, batch: list[_Held], done: list[bool], error: object = None) -> None:
        if error is not None:  # billiard's ExceptionInfo, e.g. WorkerLostError for a killed process
            logger.warning("a batch of %d deliveries ended with %r: each runs alone", len(batch),
                           getattr(error, "exception", error))
        self.running -= 1
        for held, finished in zip(batch, done, strict=True):
            state.task_ready(held, successful=finished)
            if finished:
                # Celery's own line for a task that succeeded: operators follow a task id
                # through the log whichever way it ran.
                logger.info("Task %s[%s] succeeded in a batch of %d", held.name, held.id, len(batch))
                held.ack()
            else:
                held.alone()
        self.start()


def _send_together(works: list[tuple[str, str]], number: int) -> list[bool]:
    """In a pool process: which works of a batch are done. A fault of the batch itself
    (the database away) leaves every work to its ordinary task."""
    close_old_connections()  # as around every task: a connection past its age or broken is replaced
    try:
        done = deliveries_send_together(works=works)
    except Exception:
        logger.exception("batch %d of %d deliveries failed: each runs alone", number, len(works))
        return [False] * len(works)
    logger.info("batch %d: %d of %d deliveries done together", number, sum(done), len(works))
    return done


class TogetherDeliveryTask(DeliveryTask):  # type: ignore[misc]  # celery is untyped
    """A transactional delivery task whose first attempts go in batches (see above)."""

    def Strategy(self, task: DeliveryTask, app: Celery, consumer: Consumer) -> Callable[..., None]:  # noqa: N802 - Celery's name
        ordinary = default_strategy(task, app, consumer)
        if hasattr(consumer, "delivery_batches"):
            # The consumer started again after losing the broker: what it held came on the
            # old channel, cannot be acknowledged there, and RabbitMQ gives it out again.
            # (Celery drops its own reserved requests the same way.)
            consumer.delivery_batches.held.clear()
        else:
            consumer.delivery_batches = _Batches(consumer)
        batches: _Batches = consumer.delivery_batches
        revoked = consumer.controller.state.revoked

        def on_message(message: Message, body: Any, ack: Any, reject: Any, callbacks: Any, **options: Any) -> None:
            def alone() -> None:
                ordinary(message, body, ack, reject, callbacks, **options)

            headers = message.headers
            if (headers.get("retries") or headers.get("eta") or message.delivery_info.get("redelivered")
                    or headers["id"] in revoked):
                return alone()
            args, kwargs, _ = message.decode()
            if kwargs or len(args) != 2:
                return alone()  # put off once ("waited"), or not a plain work
            batches.add(_Held(id=headers["id"], name=task.name, work=(str(args[0]), str(args[1])),
                              ack=lambda: ack(logger, consumer.connection_errors), alone=alone,
                              hostname=consumer.hostname))
            return None

        return on_message
