"""The background Celery app: non-critical scheduled work on Redis (BACKGROUND_CELERY_*).

Run with `celery -A config.background worker` and `celery -A config.background beat`;
schedules live in the database (django-celery-beat), are edited in the admin, and only
one beat sends at a time (config/beat.py). Tasks are named `background.*` and
registered here only; `task_route_guard` refuses anything else, and each app knows only
its own queues, so a background task cannot reach RabbitMQ nor a critical one Redis.
"""

import logging
import os
import platform
import socket
import traceback
from typing import Any

from celery import Celery, Task
from kombu import Queue

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.local")

logger = logging.getLogger(__name__)

BACKGROUND_QUEUE = "background"
BACKGROUND_TASK_PREFIX = "background."
# Celery's own housekeeping (celery.backend_cleanup, chords) runs on whichever app sends it.
CELERY_BUILTIN_PREFIX = "celery."


class WrongAppError(Exception):
    """A task was sent through the Celery app that does not own it."""


def task_route_guard(name: str, args: Any, kwargs: Any, options: Any, task: Any = None, **kw: Any) -> None:
    """Refuse to send a task that is not a background task through the background app."""
    if not name.startswith((BACKGROUND_TASK_PREFIX, CELERY_BUILTIN_PREFIX)):
        raise WrongAppError(
            f"task {name!r} is not a background task: background tasks are named "
            f"'{BACKGROUND_TASK_PREFIX}*' and go to Redis; send critical work through config.celery"
        )
    return None


class BackgroundTask(Task):  # type: ignore[misc]
    """Base of background jobs: a job that fails for good is kept as a FailedJob marked
    non-critical (visible in the admin and metrics, never paged for)."""

    ignore_result = True

    def on_failure(self, exc: BaseException, task_id: str, args: Any, kwargs: Any, einfo: Any) -> None:
        from notifications.services import failed_job_record  # apps are loaded by now

        try:
            failed_job_record(
                task_name=self.name,
                task_id=task_id,
                queue=BACKGROUND_QUEUE,
                args=list(args or []),
                error=exc,
                traceback="".join(traceback.format_exception(exc)),
                attempts=self.request.retries + 1,
                critical=False,
            )
        except Exception:
            logger.exception("background task %s %s failed and could not be recorded", self.name, task_id)


app = Celery("carillon-background", task_cls=BackgroundTask)
app.config_from_object("django.conf:settings", namespace="BACKGROUND_CELERY")
app.conf.task_queues = [Queue(BACKGROUND_QUEUE, routing_key=BACKGROUND_QUEUE)]
app.conf.task_routes = (task_route_guard,)
app.autodiscover_tasks(related_name="background_tasks")


@app.task(name="background.ping", ignore_result=False, shared=False)
def ping() -> dict[str, str]:
    """Answer from a background worker, naming it."""
    return {"app": "background", "host": socket.gethostname(), "python": platform.python_version()}
