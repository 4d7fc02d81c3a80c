"""The critical Celery app: notification work on RabbitMQ (CELERY_* settings).

Run a worker with `celery -A config.celery worker`. Non-critical scheduled work has its
own app on Redis in config/background.py, so a flood there never delays this one.
"""

import os
import platform
import socket

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.local")

app = Celery("carillon")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks(related_name="tasks")


@app.task(name="carillon.ping", ignore_result=False)
def ping() -> dict[str, str]:
    """Answer from a worker, naming it: a round trip proves broker, worker and results."""
    return {"app": "critical", "host": socket.gethostname(), "python": platform.python_version()}
