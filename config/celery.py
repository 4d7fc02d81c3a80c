"""The critical Celery app: notification work on RabbitMQ (CELERY_* settings).

Run a worker with `celery -A config.celery worker`. Non-critical scheduled work has its
own app on Redis in config/background.py, so a flood there never delays this one. This
module only creates the app: each Django app declares its own queues when it is ready
(notifications/apps.py, rooms/apps.py), and its tasks are found by autodiscovery.
"""

import os
import platform
import socket

from celery import Celery, Task
from celery.signals import task_postrun, task_prerun
from django.db import close_old_connections

from config.task_routing import critical_route_guard, own_queue_route

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.local")

app = Celery("carillon")
app.config_from_object("django.conf:settings", namespace="CELERY")
# Filled by the apps' ready(): Django is set up before a worker picks its -Q queues.
app.conf.task_queues = []
# The guard first (it raises for a background task), then a task's own queue, then the
# routes of the settings.
app.conf.task_routes = (critical_route_guard, own_queue_route, app.conf.task_routes)
app.autodiscover_tasks(related_name="tasks")

# Celery's Django fixup closes every database connection before and after each task
# unless CELERY_DB_REUSE_MAX is set, whatever CONN_MAX_AGE says: every task then opened
# a new connection (a fork of a PostgreSQL backend, SQLite's pragmas), more than the
# work of a short task. With this bound it closes them only every 2**31 tasks, and
# `close_old_connections` (what Django runs around each request) closes one past
# CONN_MAX_AGE or broken, so a task after a database restart still reconnects.
# A plain key: the fixup reads the literal name, not the namespaced setting.
app.conf["CELERY_DB_REUSE_MAX"] = 2**31


@task_prerun.connect
@task_postrun.connect
def _close_old_connections(sender: Task | None = None, **_: object) -> None:
    # Not for a task run eagerly (tests): it runs inside its caller's transaction, which
    # closing the connection would break.
    if sender is not None and not getattr(sender.request, "is_eager", False):
        close_old_connections()


@app.task(name="carillon.ping", ignore_result=False, shared=False)
def ping() -> dict[str, str]:
    """Answer from a worker, naming it: a round trip proves broker, worker and results."""
    return {"app": "critical", "host": socket.gethostname(), "python": platform.python_version()}
