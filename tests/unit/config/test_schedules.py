"""Daily schedules across daylight-saving changes and a changed TIME_ZONE, through
the entry Carillon's beat asks (django-celery-beat's ModelEntry, writing back only its run
fields), with frozen time; and an admin edit that beat's write-back must not undo."""

from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
import time_machine
from celery import Celery
from django.db.models.signals import pre_save
from django.test import override_settings
from django_celery_beat.models import CrontabSchedule, PeriodicTask

from config.beat import RunWritingEntry

pytestmark = pytest.mark.django_db

PARIS = ZoneInfo("Europe/Paris")
# Europe/Paris: 2026-03-29 02:00 → 03:00 (spring forward); 2026-10-25 03:00 → 02:00 (back).
SPRING = datetime(2026, 3, 26, 12, tzinfo=UTC)
FALL = datetime(2026, 10, 22, 12, tzinfo=UTC)


def beat_app(time_zone: str) -> Celery:
    """A Celery app as a beat process started with TIME_ZONE = `time_zone` has it."""
    app = Celery("beat-under-test", set_as_current=False)
    app.conf.timezone = time_zone
    return app


def daily_task(*, hour: int, minute: int, created: datetime) -> PeriodicTask:
    with time_machine.travel(created, tick=False):  # a new entry's first run is after its creation
        crontab = CrontabSchedule.objects.create(minute=str(minute), hour=str(hour), timezone=PARIS)
        return PeriodicTask.objects.create(name=f"daily {hour}:{minute}", task="background.cleanup", crontab=crontab)


def run_beat(task: PeriodicTask, *, start: datetime, hours: int, time_zones: Iterator[str]) -> list[datetime]:
    """Step a beat through `hours` of frozen time a minute at a time, sending (and saving
    last_run_at, as beat does) whenever the entry is due. Each day at noon UTC the beat
    "restarts" with the next TIME_ZONE of `time_zones`, reading its entry from the database."""
    runs: list[datetime] = []
    now = start
    entry = None
    while now < start + timedelta(hours=hours):
        with time_machine.travel(now, tick=False):
            if entry is None or (now.hour == 12 and now.minute == 0):
                time_zone = next(time_zones)
                with override_settings(TIME_ZONE=time_zone):
                    entry = RunWritingEntry(PeriodicTask.objects.get(pk=task.pk), app=beat_app(time_zone))
            due, _ = entry.is_due()
            if due:
                runs.append(now.astimezone(PARIS))
                entry = next(entry)
                entry.app = beat_app(time_zone)  # ModelEntry.__next__ forgets its app
                entry.save()
        now += timedelta(minutes=1)
    return runs


def per_day(runs: list[datetime]) -> Counter[str]:
    return Counter(run.date().isoformat() for run in runs)


@pytest.mark.parametrize("start", [SPRING, FALL], ids=["spring-forward", "fall-back"])
@pytest.mark.parametrize(("hour", "minute"), [(7, 0), (3, 30), (2, 30)])
def test_daily_job_runs_once_each_local_day_across_daylight_saving(start: datetime, hour: int, minute: int) -> None:
    task = daily_task(hour=hour, minute=minute, created=start)

    runs = run_beat(task, start=start, hours=5 * 24, time_zones=iter(["UTC"] * 10))

    assert len(runs) == 5
    assert set(per_day(runs).values()) == {1}, runs
    for run in runs:
        # 02:30 does not exist on the spring-forward day: that day's run comes at 03:30.
        skipped = run.date().isoformat() == "2026-03-29" and hour == 2
        assert (run.hour, run.minute) == ((3, 30) if skipped else (hour, minute)), run


def test_changing_time_zone_between_restarts_neither_skips_nor_repeats_a_daily_job() -> None:
    task = daily_task(hour=7, minute=0, created=SPRING)
    zones = iter(["UTC", "Asia/Tokyo", "America/Los_Angeles", "Europe/Paris", "UTC", "Asia/Kolkata"])

    runs = run_beat(task, start=SPRING, hours=5 * 24, time_zones=zones)

    assert [run.strftime("%m-%d %H:%M") for run in runs] == [
        "03-27 07:00", "03-28 07:00", "03-29 07:00", "03-30 07:00", "03-31 07:00",
    ]


def test_an_admin_edit_landing_while_beat_writes_back_a_run_is_kept() -> None:
    task = daily_task(hour=7, minute=0, created=SPRING)
    entry = RunWritingEntry(task, app=beat_app("UTC"))  # beat's copy, read before the edits
    entry.model.total_run_count = 1
    latest = {"args": '["edited"]'}

    def admin_edits(instance: PeriodicTask, **_: object) -> None:
        # An edit committed while beat writes its row back (after any read of it).
        latest["args"] = '["edited again"]'
        PeriodicTask.objects.filter(pk=instance.pk).update(args=latest["args"])

    PeriodicTask.objects.filter(pk=task.pk).update(args=latest["args"], enabled=False)
    pre_save.connect(admin_edits, sender=PeriodicTask)
    try:
        entry.save()
    finally:
        pre_save.disconnect(admin_edits, sender=PeriodicTask)

    saved = PeriodicTask.objects.get(pk=task.pk)
    assert (saved.args, saved.enabled, saved.total_run_count) == (latest["args"], False, 1)
