"""The critical Celery app: notification work on RabbitMQ (CELERY_* settings).

Run a worker with `celery -A config.celery worker`. Non-critical scheduled work has its
own app on Redis in config/background.py, so a flood there never delays this one. This
module only creates the app: each Django app declares its own queues when it is ready
(notifications/apps.py, rooms/apps.py), and its tasks are found by autodiscovery.
"""

import os
import platform
import socket

from celery import Celery

from config.task_routing import critical_route_guard

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.local")

app = Celery("carillon")
app.config_from_object("django.conf:settings", namespace="CELERY")
# Filled by the apps' ready(): Django is set up before a worker picks its -Q queues.
app.conf.task_queues = []
# The guard first (it raises for a background task), then the routes of the settings
# (CELERY_TASK_ROUTES: rooms.* to carillon.rooms).
app.conf.task_routes = (critical_route_guard, app.conf.task_routes)
app.autodiscover_tasks(related_name="tasks")


@app.task(name="carillon.ping", ignore_result=False, shared=False)
def ping() -> dict[str, str]:
    """Answer from a worker, naming it: a round trip proves broker, worker and results."""
    return {"app": "critical", "host": socket.gethostname(), "python": platform.python_version()}
