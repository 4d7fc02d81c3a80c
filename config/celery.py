"""The critical Celery app: notification work on RabbitMQ (CELERY_* settings).

Run a worker with `celery -A config.celery worker`. Non-critical scheduled work has its
own app on Redis in config/background.py, so a flood there never delays this one.
"""

import os
import platform
import socket
from typing import Any

from celery import Celery
from celery.signals import worker_init

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.local")

from config.background import BACKGROUND_TASK_PREFIX, WrongAppError  # noqa: E402
from notifications.queues import task_queues, topology_declare  # noqa: E402


def task_route_guard(name: str, args: Any, kwargs: Any, options: Any, task: Any = None, **kw: Any) -> None:
    """Refuse to send a background task (`background.*`, config/background.py) to RabbitMQ."""
    if name.startswith(BACKGROUND_TASK_PREFIX):
        raise WrongAppError(
            f"task {name!r} is a background task: send it through config.background (Redis), "
            "not the critical app"
        )
    return None


app = Celery("carillon")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.conf.task_queues = task_queues()
# The guard first (it raises for a background task), then the routes of the settings
# (CELERY_TASK_ROUTES: rooms.* to carillon.rooms).
app.conf.task_routes = (task_route_guard, app.conf.task_routes)
app.autodiscover_tasks(related_name="tasks")


@worker_init.connect
def _declare_topology(**kwargs: Any) -> None:
    """Declare every exchange and queue, dead-letter queues included, before consuming.

    A worker declares only the queues it consumes; the dead-letter queues and the events
    exchange must exist before the first message is rejected or published.
    """
    with app.connection_for_write() as connection:
        topology_declare(connection)


@app.task(name="carillon.ping", ignore_result=False, shared=False)
def ping() -> dict[str, str]:
    """Answer from a worker, naming it: a round trip proves broker, worker and results."""
    return {"app": "critical", "host": socket.gethostname(), "python": platform.python_version()}
