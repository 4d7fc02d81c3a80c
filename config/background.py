"""The background Celery app: non-critical scheduled work on Redis (BACKGROUND_CELERY_*).

Run with `celery -A config.background worker` and one `celery -A config.background beat`;
schedules live in the database (django-celery-beat) and are edited in the admin.
"""

import os
import platform
import socket

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.local")

app = Celery("carillon-background")
app.config_from_object("django.conf:settings", namespace="BACKGROUND_CELERY")
app.autodiscover_tasks(related_name="background_tasks")


@app.task(name="background.ping", ignore_result=False)
def ping() -> dict[str, str]:
    """Answer from a background worker, naming it."""
    return {"app": "background", "host": socket.gethostname(), "python": platform.python_version()}
