"""Transactional deliveries taken several at a time by the worker that holds them.

A Celery task costs its worker more CPU than a transactional delivery's own work (the
message handed to a pool process and back, a request, task events). Under load a worker
holds several delivery messages at once (its prefetch), and sending them together costs
one read of their events and users, one insert and one record of the sends
(`deliveries_send_together`). So the transactional delivery tasks are consumed by this
strategy instead of Celery's:

- A first attempt (not a retry, not redelivered), or one put off that is now due, waits
  in the worker's main process until a pool process is free, with the others that arrive
  meanwhile, at most CARILLON_DELIVERY_BATCH_MAX. At low load a message finds a free
  process and goes at once, alone: nothing waits for a batch to fill.
- The batch runs in a pool process; each message it finished is acknowledged. One whose
  analytics delivery waits for its batch window is published again, put off (`waited`),
  and acknowledged: when it comes back, it is flushed in whatever batch it lands in,
  with that batch's analytics. A lone analytics delivery costs no task run of its own.
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
from datetime import UTC, datetime
from typing import Any

from celery import Celery, current_app
from celery.worker import state
from celery.worker.consumer import Consumer
from celery.worker.strategy import default as default_strategy
from django.conf import settings
from django.db import close_old_connections
from kombu.message import Message

from notifications.services.deliveries import PutOff, Work, deliveries_send_together
from notifications.tasks.base import DeliveryTask

logger = logging.getLogger(__name__)


@dataclass(eq=False)
class _Held:
    """A delivery message in the worker's hands, waiting for or in a batch; shaped like the
    requests Celery lists for `inspect`."""

    id: str
    name: str
    work: Work
    ack: Callable[[], Any]
    alone: Callable[[], Any]  # hand it to Celery's own strategy: the ordinary task
    hostname: str

    def info(self, safe: bool = False) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "args": list(self.work[:2]),
                "kwargs": {"waited": True} if self.work.waited else {}, "hostname": self.hostname,
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
            _send_together, args=([(held.id, held.name, held.work) for held in batch], self.started),
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


def _send_together(jobs: list[tuple[str, str, Work]], number: int) -> list[bool]:
    """In a pool process: which jobs (task id, task name, work) of a batch are finished:
    done, or put off and published again. A fault of the batch itself (the database
    away) leaves every work to its ordinary task."""
    close_old_connections()  # as around every task: a connection past its age or broken is replaced
    try:
        outcomes = deliveries_send_together(works=[work for _, _, work in jobs])
    except Exception:
        logger.exception("batch %d of %d deliveries failed: each runs alone", number, len(jobs))
        return [False] * len(jobs)
    finished = [outcome is True or isinstance(outcome, PutOff) and _put_off(job, outcome)
                for job, outcome in zip(jobs, outcomes, strict=True)]
    logger.info("batch %d: %d of %d deliveries done together, %d put off", number, outcomes.count(True), len(jobs),
                sum(isinstance(outcome, PutOff) for outcome in outcomes))
    return finished


def _put_off(job: tuple[str, str, Work], later: PutOff) -> bool:
    """Publish a job again for later (`waited`); False if that failed (it runs alone)."""
    task_id, name, work = job
    try:
        current_app.tasks[name].put_off(task_id, [work.event_id, work.subscriber], {}, later.seconds)
    except Exception:
        logger.exception("task %s: could not be put off: it runs alone", task_id)
        return False
    return True


def _due(eta: str | None) -> bool:
    """Whether a message's countdown is over (none, or RabbitMQ's delayed delivery held it
    until then); one still to wait goes to Celery, which holds it."""
    if not eta:
        return True
    try:
        when = datetime.fromisoformat(eta)
    except ValueError:
        return False
    return (when if when.tzinfo else when.replace(tzinfo=UTC)) <= datetime.now(UTC)


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
            if (headers.get("retries") or not _due(headers.get("eta")) or message.delivery_info.get("redelivered")
                    or headers["id"] in revoked):
                return alone()
            args, kwargs, _ = message.decode()
            if len(args) != 2 or kwargs not in ({}, {"waited": True}):
                return alone()  # not a plain work
            batches.add(_Held(id=headers["id"], name=task.name, work=Work(str(args[0]), str(args[1]), bool(kwargs)),
                              ack=lambda: ack(logger, consumer.connection_errors), alone=alone,
                              hostname=consumer.hostname))
            return None

        return on_message
