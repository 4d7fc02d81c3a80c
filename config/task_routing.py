"""Which Celery app owns which task, by name, so that a task can never ride the wrong broker.

Background tasks are named `background.*` and go to Redis (config/background.py); every
other task is critical and goes to RabbitMQ (config/celery.py). Each app's router starts
with its guard, which raises before anything reaches a broker; the critical app's then
sends a task that names its own queue (the channel tasks) there.
"""

from typing import Any

BACKGROUND_QUEUE = "background"
BACKGROUND_TASK_PREFIX = "background."
# Celery's own housekeeping (celery.backend_cleanup, chords) runs on whichever app sends it.
CELERY_BUILTIN_PREFIX = "celery."


class WrongAppError(Exception):
    """A task was sent through the Celery app that does not own it."""


def critical_route_guard(name: str, args: Any, kwargs: Any, options: Any, task: Any = None, **kw: Any) -> None:
    """Refuse to send a background task through the critical app (RabbitMQ)."""
    if name.startswith(BACKGROUND_TASK_PREFIX):
        raise WrongAppError(
            f"task {name!r} is a background task: send it through config.background (Redis), "
            "not the critical app"
        )
    return None


def own_queue_route(name: str, args: Any, kwargs: Any, options: Any, task: Any = None, **kw: Any) -> dict[str, str] | None:
    """Send a task that names its queue (`own_queue`, set where the task is declared) there,
    unless the caller names another. (Celery's own `queue` task attribute did this; Celery
    5.7 deprecates it in favour of routes.)"""
    queue = getattr(task, "own_queue", None)
    return {"queue": queue} if queue else None


def background_route_guard(name: str, args: Any, kwargs: Any, options: Any, task: Any = None, **kw: Any) -> None:
    """Refuse to send a task that is not a background task through the background app (Redis)."""
    if not name.startswith((BACKGROUND_TASK_PREFIX, CELERY_BUILTIN_PREFIX)):
        raise WrongAppError(
            f"task {name!r} is not a background task: background tasks are named "
            f"'{BACKGROUND_TASK_PREFIX}*' and go to Redis; send critical work through config.celery"
        )
    return None
