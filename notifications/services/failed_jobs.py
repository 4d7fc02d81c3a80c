"""Failed jobs: a job that will not succeed by retrying is kept for an operator, who
replays it through the normal path or discards it, saying why."""

import logging
import uuid
from typing import Any

from django.db import transaction

from notifications.exceptions import FailedJobStateError
from notifications.models import (
    Delivery,
    DeliveryChunk,
    Event,
    FailedJob,
    FailedJobAction,
    OutboxMessage,
)
from notifications.relay import outbox_write

logger = logging.getLogger(__name__)


def failed_job_record(
    *,
    task_name: str,
    task_id: str,
    queue: str,
    args: list[Any],
    error: BaseException,
    traceback: str,
    attempts: int,
    source: str = "task",
    critical: bool = True,
) -> tuple[FailedJob, bool]:
    """Keep a job that will not succeed by retrying, with what an operator needs to
    replay it; say whether it is new. Recorded once per task id: a dead-letter drain
    finding the same message later adds nothing."""
    event_id, subscriber_name = (args + [None, None])[:2] if isinstance(args, list) else (None, None)
    event = Event.objects.filter(pk=event_id).first() if _is_uuid(event_id) else None
    delivery = (
        Delivery.objects.filter(event=event, subscriber=subscriber_name).order_by("pk").first() if event else None
    )
    failed_job, created = FailedJob.objects.get_or_create(
        dedup_key=task_id or None,
        defaults={
            "task_name": task_name,
            "task_id": task_id,
            "queue": queue,
            "args": args,
            "event": event,
            "delivery": delivery,
            "error_class": type(error).__name__,
            "error_message": str(error),
            "traceback": traceback,
            "attempts": attempts,
            "source": source,
            "critical": critical,
        },
    )
    if created:
        logger.error("failed job %s: task %s %s gave up: %s", failed_job.pk, task_name, task_id, error)
    return failed_job, created


def _is_uuid(value: object) -> bool:
    try:
        uuid.UUID(str(value))
    except ValueError:
        return False
    return True


def failed_job_replay(*, failed_job_id: int, user_id: int | None) -> FailedJob:
    """Send a failed job again through the normal path: an outbox row, published after
    commit. Its deliveries that failed are re-opened (for a broadcast's chunk, only that
    chunk's); those that in fact succeeded stay done, so a job that had gone through
    sends nothing new."""
    with transaction.atomic():
        failed_job = FailedJob.objects.select_for_update().get(pk=failed_job_id)
        if failed_job.state != FailedJob.State.FAILED:
            raise FailedJobStateError(f"failed job {failed_job_id} is already {failed_job.state}")
        if failed_job.event is None or len(failed_job.args) not in (2, 3):
            raise FailedJobStateError(f"failed job {failed_job_id} names no event to deliver: {failed_job.args!r}")
        event_id, subscriber_name = failed_job.args[:2]
        failed = Delivery.objects.filter(event_id=event_id, subscriber=subscriber_name, status=Delivery.Status.FAILED)
        if len(failed_job.args) == 3:  # one chunk of a broadcast: its recipients alone
            chunk = DeliveryChunk.objects.get(
                broadcast__event_id=event_id, broadcast__subscriber=subscriber_name, index=failed_job.args[2]
            )
            failed = failed.filter(recipient__in=[f"user:{member}" for member in chunk.user_ids])
        reopened = failed.update(status=Delivery.Status.PENDING, last_error="")
        [row] = outbox_write([OutboxMessage(
            event_id=event_id,
            kind=OutboxMessage.Kind.TASK,
            subscriber=subscriber_name,
            queue=failed_job.queue,
            payload={"task": failed_job.task_name, "args": failed_job.args, "queue": failed_job.queue},
        )])
        failed_job.state = FailedJob.State.REPLAYED
        failed_job.save(update_fields=["state"])
        FailedJobAction.objects.create(
            failed_job=failed_job, kind=FailedJobAction.Kind.REPLAY, user_id=user_id,
            outcome=f"re-enqueued (outbox row {row.pk}); {reopened} failed deliveries re-opened",
        )
    logger.info("failed job %s replayed by user %s", failed_job_id, user_id)
    return failed_job


def failed_job_discard(*, failed_job_id: int, user_id: int | None, reason: str) -> FailedJob:
    """Close a failed job without sending it, keeping why."""
    if not reason.strip():
        raise FailedJobStateError(
            'say why the job is discarded: send {"reason": ...}', code="reason_required", status=400
        )
    with transaction.atomic():
        failed_job = FailedJob.objects.select_for_update().get(pk=failed_job_id)
        if failed_job.state != FailedJob.State.FAILED:
            raise FailedJobStateError(f"failed job {failed_job_id} is already {failed_job.state}")
        failed_job.state = FailedJob.State.DISCARDED
        failed_job.save(update_fields=["state"])
        FailedJobAction.objects.create(
            failed_job=failed_job, kind=FailedJobAction.Kind.DISCARD, user_id=user_id, reason=reason,
            outcome="discarded",
        )
    return failed_job
