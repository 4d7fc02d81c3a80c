"""Schedule the rooms recovery sweep on the background app's beat (editable in the admin)."""

from django.apps.registry import Apps
from django.db import migrations
from django.db.backends.base.schema import BaseDatabaseSchemaEditor

NAME = "rooms: recover stalled rooms"


def schedule(apps: Apps, schema_editor: BaseDatabaseSchemaEditor) -> None:
    interval_model = apps.get_model("django_celery_beat", "IntervalSchedule")
    task_model = apps.get_model("django_celery_beat", "PeriodicTask")
    # Every minute; a room counts as stalled 5 min past its ack timeout, longer than a
    # send's transient-error retries take, so a slow send is rarely repeated.
    every_minute, _ = interval_model.objects.get_or_create(every=60, period="seconds")
    task_model.objects.get_or_create(
        name=NAME,
        defaults={"task": "background.rooms_recover", "interval": every_minute, "kwargs": '{"stalled_after_s": 300}'},
    )


def unschedule(apps: Apps, schema_editor: BaseDatabaseSchemaEditor) -> None:
    apps.get_model("django_celery_beat", "PeriodicTask").objects.filter(name=NAME).delete()


class Migration(migrations.Migration):
    dependencies = [
        ("rooms", "0002_operate_permission"),
        ("django_celery_beat", "0019_alter_periodictasks_options"),
    ]

    operations = [migrations.RunPython(schedule, unschedule)]
