"""The background Celery app: non-critical scheduled work on Redis (BACKGROUND_CELERY_*).

Run with `celery -A config.background worker` and `celery -A config.background beat`;
schedules live in the database (django-celery-beat), are edited in the admin, and only
one beat sends at a time (config/beat.py). Tasks are named `background.*` and
registered here only; the route guard (config/task_routing.py) refuses anything else,
and each app knows only its own queues, so a background task cannot reach RabbitMQ nor
a critical one Redis.
"""

import os
import platform
import socket

from celery import Celery
from kombu import Queue

from config.task_routing import BACKGROUND_QUEUE, background_route_guard

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.local")

# A background job that fails for good is kept as a non-critical FailedJob by the
# notifications app (its task_failure handler in notifications/background_tasks.py).
app = Celery("carillon-background")
app.config_from_object("django.conf:settings", namespace="BACKGROUND_CELERY")
app.conf.task_queues = [Queue(BACKGROUND_QUEUE, routing_key=BACKGROUND_QUEUE)]
app.conf.task_routes = (background_route_guard,)
app.autodiscover_tasks(related_name="background_tasks")


@app.task(name="background.ping", ignore_result=False, shared=False)
def ping() -> dict[str, str]:
    """Answer from a background worker, naming it."""
    return {"app": "background", "host": socket.gethostname(), "python": platform.python_version()}
