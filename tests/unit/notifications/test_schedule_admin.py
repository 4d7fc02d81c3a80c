"""The periodic-task admin offers and accepts background tasks only."""

import pytest
from django.test import Client
from django_celery_beat.models import IntervalSchedule, PeriodicTask

pytestmark = pytest.mark.django_db

ADD_URL = "/admin/django_celery_beat/periodictask/add/"


def add_form(task: str, interval: IntervalSchedule) -> dict[str, object]:
    return {
        "name": f"every minute: {task}", "regtask": "", "task": task, "enabled": "on", "interval": interval.pk,
        "args": "[]", "kwargs": "{}", "headers": "{}", "priority": "", "expire_seconds": "",
    }


def test_the_task_list_is_the_background_apps(admin_client: Client) -> None:
    page = admin_client.get(ADD_URL).content.decode()

    assert 'value="background.digests_send_due"' in page
    assert 'value="background.cleanup"' in page
    assert "notifications.email.deliver" not in page


def test_a_critical_task_cannot_be_scheduled(admin_client: Client) -> None:
    interval = IntervalSchedule.objects.create(every=1, period=IntervalSchedule.MINUTES)

    refused = admin_client.post(ADD_URL, add_form("notifications.email.deliver", interval))
    accepted = admin_client.post(ADD_URL, add_form("background.cleanup", interval))

    assert refused.status_code == 200
    assert "is not a background task" in refused.content.decode()
    assert accepted.status_code == 302
    assert list(PeriodicTask.objects.filter(interval=interval).values_list("task", flat=True)) == ["background.cleanup"]
