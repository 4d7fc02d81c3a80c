"""The built-in background jobs' schedules (django-celery-beat), editable in the admin
afterwards: Admin → Periodic tasks. See docs/operations.md, "Scheduled jobs"."""

import json
from datetime import timedelta

from django.conf import settings
from django.db import migrations
from django.utils import timezone

# name → (task, kind, schedule). Crontabs run in the zone Django had when this migration
# ran; the zone is stored with the crontab, so changing TIME_ZONE later does not move them.
SCHEDULES = {
    "digests: daily at 07:00": ("background.digests_send_due", "crontab", {"minute": "0", "hour": "7"}),
    "clean-up: daily at 03:30": ("background.cleanup", "crontab", {"minute": "30", "hour": "3"}),
    "dead-letter drain: every 5 minutes": ("background.drain_dead_letters", "interval", {"every": 5, "period": "minutes"}),
    "realtime history trim: hourly": ("background.realtime_history_trim", "interval", {"every": 1, "period": "hours"}),
    # An installation that already has months of rows is cleaned on the day of the
    # upgrade, not at the next 03:30; once, then it disables itself.
    "clean-up: once after install": ("background.cleanup", "clocked", {"after_minutes": 10}),
}


def create_schedules(apps, schema_editor):
    CrontabSchedule = apps.get_model("django_celery_beat", "CrontabSchedule")
    IntervalSchedule = apps.get_model("django_celery_beat", "IntervalSchedule")
    ClockedSchedule = apps.get_model("django_celery_beat", "ClockedSchedule")
    PeriodicTask = apps.get_model("django_celery_beat", "PeriodicTask")
    PeriodicTasks = apps.get_model("django_celery_beat", "PeriodicTasks")
    for name, (task, kind, spec) in SCHEDULES.items():
        fields = {"task": task, "args": json.dumps([]), "kwargs": json.dumps({}), "enabled": True}
        if kind == "crontab":
            fields["crontab"], _ = CrontabSchedule.objects.get_or_create(
                minute=spec["minute"], hour=spec["hour"], day_of_week="*", day_of_month="*",
                month_of_year="*", timezone=settings.TIME_ZONE,
            )
        elif kind == "interval":
            fields["interval"], _ = IntervalSchedule.objects.get_or_create(every=spec["every"], period=spec["period"])
        else:
            fields["clocked"] = ClockedSchedule.objects.create(
                clocked_time=timezone.now() + timedelta(minutes=spec["after_minutes"])
            )
            fields["one_off"] = True
        PeriodicTask.objects.get_or_create(name=name, defaults=fields)
    # A running beat notices the new schedules at its next tick, not only at its next
    # full read (every 5 minutes).
    PeriodicTasks.objects.update_or_create(ident=1, defaults={"last_update": timezone.now()})


def delete_schedules(apps, schema_editor):
    apps.get_model("django_celery_beat", "PeriodicTask").objects.filter(name__in=SCHEDULES).delete()


class Migration(migrations.Migration):
    dependencies = [
        ("notifications", "0002_digests"),
        ("django_celery_beat", "0019_alter_periodictasks_options"),
    ]

    operations = [migrations.RunPython(create_schedules, delete_schedules)]
