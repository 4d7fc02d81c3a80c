"""Scheduled jobs of the notifications app on the background app (Redis), started by
celery beat from the schedules in the database (docs/operations.md, "Scheduled jobs").

Each is thin, idempotent, and safe to run twice or late; a job that fails for good is a
non-critical FailedJob (`_record_failure` below).
"""

import logging
import traceback
from typing import Any

from celery.signals import task_failure

from config.background import app
from config.task_routing import BACKGROUND_QUEUE
from core.errors import DATABASE_UNREACHABLE, ProviderTransientError
from notifications.cleanup import cleanup_run
from notifications.dead_letters import dead_letter_drain
from notifications.digests import (
    digest_due_user_ids,
    digest_prepare,
    digest_send,
    digest_unsent_ids,
)
from notifications.services.failed_jobs import failed_job_record

logger = logging.getLogger(__name__)

TRANSIENT_ERRORS = (ProviderTransientError, *DATABASE_UNREACHABLE)


@task_failure.connect
def _record_failure(
    sender: Any, task_id: str, exception: BaseException, args: Any, **kwargs: Any
) -> None:
    """Keep a background job that failed for good as a FailedJob marked non-critical:
    visible in the admin and metrics, never paged for. Critical tasks record their own
    (notifications/tasks/base.py)."""
    if getattr(sender, "app", None) is not app:
        return
    try:
        failed_job_record(
            task_name=sender.name,
            task_id=task_id,
            queue=BACKGROUND_QUEUE,
            args=list(args or []),
            error=exception,
            traceback="".join(traceback.format_exception(exception)),
            attempts=sender.request.retries + 1,
            critical=False,
        )
    except Exception:
        logger.exception("background task %s %s failed and could not be recorded", sender.name, task_id)


@app.task(name="background.digests_send_due", shared=False)
def digests_send_due() -> int:
    """Record every due digest and queue one send per digest; return how many."""
    # First what a sender that died or gave up left unsent, then the newly due ones (each
    # queued once; a digest's lease would keep a second send out anyway).
    unsent = digest_unsent_ids()
    for digest_id in unsent:
        digest_send_one.delay(digest_id)
    queued = len(unsent)
    for user_id in digest_due_user_ids():
        digest = digest_prepare(user_id=user_id)
        if digest is not None and digest.pk not in unsent:
            digest_send_one.delay(digest.pk)
            queued += 1
    logger.info("digests: %d queued", queued)
    return queued


@app.task(
    name="background.digest_send",
    shared=False,
    autoretry_for=TRANSIENT_ERRORS,
    retry_backoff=30,
    retry_backoff_max=1800,
    max_retries=6,
)
def digest_send_one(digest_id: int) -> None:
    """Send one recorded digest (nothing if it is sent already or taken by another run)."""
    digest_send(digest_id=digest_id)


@app.task(name="background.cleanup", shared=False)
def cleanup() -> dict[str, int]:
    """Delete finished deliveries, outbox rows and read notifications past retention."""
    result = cleanup_run()
    return {
        "deliveries": result.deliveries,
        "outbox_messages": result.outbox_messages,
        "notifications": result.notifications,
    }


@app.task(name="background.drain_dead_letters", shared=False)
def drain_dead_letters() -> dict[str, int]:
    """Record the critical app's dead letters as FailedJobs (the queue is RabbitMQ's; the
    job only reads it, as `manage.py drain_dead_letters` does)."""
    result = dead_letter_drain()
    return {"taken": result.taken, "recorded": result.recorded}
