"""Scheduled background work against the real Redis, real beat and worker processes,
the database and the sandbox's SMTP server.

Each test gives its processes a Redis database of their own, so what beat sends can be
counted in the `background` list there (kombu's Redis transport keeps a queue as a list)
and no other test's background worker takes it.
"""

import base64
import json
import os
import signal
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from itertools import cycle, groupby
from typing import Any, cast

import pytest
import redis
from celery import Celery
from django.conf import settings
from django.test import Client
from django.utils import timezone
from django_celery_beat.models import ClockedSchedule, IntervalSchedule, PeriodicTask, PeriodicTasks

from config.background import app as background_app
from config.beat import LockedDatabaseScheduler
from config.task_routing import BACKGROUND_QUEUE
from notifications.background_tasks import cleanup, digest_send_one
from notifications.digests import digest_due_user_ids, digest_prepare
from notifications.models import (
    Delivery,
    Digest,
    Event,
    FailedJob,
    Notification,
    OutboxMessage,
)
from realtime.history import history_trim_expired
from sandbox.client import SandboxClient
from tests.factories import recipient_user
from tests.processes import ManagedProcess, needs_own_postgres, postgres_ctl, python, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

# Redis has 16 databases: 9..15 in turn, away from the suite's db 0; each test's processes
# are stopped and its database emptied before the next test takes one.
_databases = cycle(range(9, 16))


def redis_url(db: int) -> str:
    return f"{settings.REDIS_URL.rsplit('/', 1)[0]}/{db}"


@pytest.fixture
def redis_db() -> Iterator[int]:
    db = next(_databases)
    client = redis.Redis.from_url(redis_url(db))
    client.flushdb()
    yield db
    client.flushdb()


@pytest.fixture
def no_schedules() -> None:
    """Only what the test creates: the built-in schedules would send at their own times."""
    PeriodicTask.objects.all().delete()


@pytest.fixture
def start_beat(redis_db: int, no_schedules: None) -> Iterator[Callable[..., ManagedProcess]]:
    """Start `celery beat` processes sharing this test's Redis database and lock."""
    started: list[ManagedProcess] = []

    def start(name: str, **env: str) -> ManagedProcess:
        process = ManagedProcess(
            name,
            python("-m", "celery", "-A", "config.background", "beat", "--loglevel", "INFO"),
            env={
                "REDIS_URL": redis_url(redis_db),
                # Short, so that a test sees the standby take over within seconds.
                "CARILLON_BEAT_LOCK_TIMEOUT_SECONDS": "3",
                **env,
            },
        )
        started.append(process)
        return process

    yield start
    for process in started:
        process.kill()  # the test is over: a graceful stop only costs time


@pytest.fixture
def start_background_worker(
    redis_db: int, pipeline_env: dict[str, str]
) -> Iterator[Callable[..., ManagedProcess]]:
    """A background worker on this test's Redis database, sending email to the sandbox."""
    started: list[ManagedProcess] = []

    def start(**env: str) -> ManagedProcess:
        process = ManagedProcess(
            f"background-worker-{redis_db}",
            python("-m", "celery", "-A", "config.background", "worker", "--loglevel", "INFO",
                   "--hostname", f"test-background-{redis_db}@%h", "--queues", BACKGROUND_QUEUE,
                   "--concurrency", "1", "--without-mingle", "--without-gossip"),
            env={**pipeline_env, "REDIS_URL": redis_url(redis_db), **env},
        )
        started.append(process)
        process.wait_for_log(" ready.", timeout=90)
        return process

    yield start
    for process in started:
        process.kill()  # the test is over: a graceful stop only costs time


def queued(db: int, periodic_task: str | None = None) -> list[dict[str, Any]]:
    """Messages waiting in the background queue of Redis database `db`, oldest first,
    each with its decoded args; only those beat sent for `periodic_task` if given."""
    raw = redis.Redis.from_url(redis_url(db)).lrange(BACKGROUND_QUEUE, 0, -1)
    messages = []
    for item in reversed(raw):  # kombu LPUSHes and BRPOPs
        message = json.loads(item)
        args, _kwargs, _embed = json.loads(base64.b64decode(message["body"]))
        message["args"] = args
        if periodic_task is None or message["headers"].get("periodic_task_name") == periodic_task:
            messages.append(message)
    return messages


def send_to(db: int, task: Any, *args: Any) -> None:
    """Send a background task into Redis database `db`, where this test's worker listens."""
    with background_app.connection_for_write(redis_url(db)) as connection:
        task.apply_async(args, connection=connection)


def every_second(name: str, *, task: str = "background.probe", **fields: Any) -> PeriodicTask:
    """Every second, a task no worker here runs (beat sends it by name; it waits in Redis)."""
    interval, _ = IntervalSchedule.objects.get_or_create(every=1, period=IntervalSchedule.SECONDS)
    return PeriodicTask.objects.create(name=name, task=task, interval=interval, **fields)


def sender_pid(message: dict[str, Any]) -> int:
    """The process that published a message: Celery's `origin` header is gen<pid>@<host>."""
    return int(message["headers"]["origin"].split("@")[0].removeprefix("gen"))


# --- The schedule ------------------------------------------------------------------


def test_schedule_changed_in_the_admin_takes_effect_without_restarting_beat(
    start_beat: Callable[..., ManagedProcess], redis_db: int, admin_client: Client
) -> None:
    probe = every_second("probe", enabled=False, args=json.dumps(["before"]))
    every_second("ticker")  # a clock: its sends show beat ticking on
    beat = start_beat("beat-admin")
    beat.wait_for_log("took the lock")

    enabled = admin_client.post(
        "/admin/django_celery_beat/periodictask/", {"action": "enable_tasks", "_selected_action": [probe.pk]}
    )
    wait_for(lambda: queued(redis_db, "probe"), "beat sends the task enabled in the admin")
    # Edited as the admin's change form does: a save, which marks the schedule changed.
    probe.refresh_from_db()
    probe.args = json.dumps(["after"])
    probe.save()
    wait_for(lambda: queued(redis_db, "probe")[-1]["args"] == ["after"], "beat sends the edited arguments")
    reloads = beat.log().count("Schedule changed")
    paused = admin_client.post(
        "/admin/django_celery_beat/periodictask/", {"action": "disable_tasks", "_selected_action": [probe.pk]}
    )
    wait_for(lambda: beat.log().count("Schedule changed") > reloads, "beat reads the paused schedule")
    sent_before_pause = len(queued(redis_db, "probe"))
    ticks = len(queued(redis_db, "ticker"))
    wait_for(lambda: len(queued(redis_db, "ticker")) >= ticks + 3, "three more ticks")

    assert enabled.status_code == paused.status_code == 302
    assert len(queued(redis_db, "probe")) == sent_before_pause  # paused: nothing more
    assert beat.process.poll() is None  # the same process throughout


@needs_own_postgres
def test_beat_sends_on_after_postgresql_restarts(start_beat: Callable[..., ManagedProcess], redis_db: int) -> None:
    every_second("ticker")
    beat = start_beat("beat-postgres-restart")
    wait_for(lambda: queued(redis_db, "ticker"), "beat sends")
    logged = len(beat.log())

    postgres_ctl("stop")
    try:
        # Beat reads the schedule and saves each run's time as it sends, every second here.
        wait_for(lambda: "Database" in beat.log()[logged:] or beat.process.poll() is not None,
                 "beat meets the database gone")
    finally:
        postgres_ctl("restart")
    ticks = len(queued(redis_db, "ticker"))

    wait_for(lambda: len(queued(redis_db, "ticker")) >= ticks + 3 or beat.process.poll() is not None,
             "three more ticks")
    assert beat.process.poll() is None, beat.log()[logged:]
    assert len(queued(redis_db, "ticker")) >= ticks + 3


def test_a_one_off_schedule_runs_once(start_beat: Callable[..., ManagedProcess], redis_db: int) -> None:
    clocked = ClockedSchedule.objects.create(clocked_time=timezone.now())
    once = PeriodicTask.objects.create(name="once", task="background.probe", clocked=clocked, one_off=True)
    every_second("ticker")  # a clock: its sends show beat ticking on
    start_beat("beat-one-off")

    wait_for(lambda: queued(redis_db, "once"), "the one-off sent")
    ticks = len(queued(redis_db, "ticker"))
    wait_for(lambda: len(queued(redis_db, "ticker")) >= ticks + 5, "five more ticks")

    assert len(queued(redis_db, "once")) == 1
    # Saved right after sending: a beat that restarts or takes over disables it, not resends it.
    assert PeriodicTask.objects.get(pk=once.pk).total_run_count == 1


# --- One beat at a time --------------------------------------------------------------


def test_two_beats_started_together_never_both_send_and_the_second_takes_over(
    start_beat: Callable[..., ManagedProcess], redis_db: int
) -> None:
    every_second("probe")
    beats = [start_beat("beat-a"), start_beat("beat-b")]

    wait_for(lambda: len(queued(redis_db, "probe")) >= 3, "three sends")
    first_senders = {sender_pid(m) for m in queued(redis_db, "probe")}
    [holder] = [beat for beat in beats if beat.process.pid in first_senders]
    [standby] = [beat for beat in beats if beat is not holder]
    holder.kill()  # as a crash would: no release, the lease has to run out
    wait_for(
        lambda: standby.process.pid in {sender_pid(m) for m in queued(redis_db, "probe")},
        "the standby beat takes over",
    )
    sent_at_takeover = len(queued(redis_db, "probe"))
    wait_for(lambda: len(queued(redis_db, "probe")) >= sent_at_takeover + 3, "three more sends")

    senders = [sender_pid(m) for m in queued(redis_db, "probe")]
    # One sender, then the other: never both, never back.
    assert [pid for pid, _ in groupby(senders)] == [holder.process.pid, standby.process.pid]
    assert "standing by" not in holder.log() and "took the lock" in standby.log()


def test_a_beat_that_hung_past_its_lease_sends_nothing_when_it_wakes(
    start_beat: Callable[..., ManagedProcess], redis_db: int
) -> None:
    every_second("probe")
    first = start_beat("beat-hangs")
    first.wait_for_log("took the lock")
    second = start_beat("beat-waits")
    wait_for(lambda: queued(redis_db, "probe"), "the first beat sends")

    os.kill(first.process.pid, signal.SIGSTOP)  # a long GC pause, a frozen VM
    try:
        wait_for(lambda: second.process.pid in {sender_pid(m) for m in queued(redis_db, "probe")}, "takeover")
    finally:
        os.kill(first.process.pid, signal.SIGCONT)
    first.wait_for_log("lost the lock")
    sent = len(queued(redis_db, "probe"))
    wait_for(lambda: len(queued(redis_db, "probe")) >= sent + 3, "three more sends")

    senders = [sender_pid(m) for m in queued(redis_db, "probe")]
    assert [pid for pid, _ in groupby(senders)] == [first.process.pid, second.process.pid]


@pytest.fixture
def sending_scheduler(redis_db: int, no_schedules: None, settings: Any) -> LockedDatabaseScheduler:
    """A beat scheduler driven in this process, holding the lock, that has sent `probe`."""
    settings.REDIS_URL = redis_url(redis_db)  # where the beat lock lives
    app = Celery("beat-under-test", broker=redis_url(redis_db))
    app.conf.task_default_queue = BACKGROUND_QUEUE
    every_second("probe")
    scheduler = LockedDatabaseScheduler(app=app)
    wait_for(lambda: scheduler.tick() is not None and queued(redis_db, "probe"), "the first send")
    return scheduler


def test_a_beat_that_loses_its_lease_between_its_check_and_the_send_sends_nothing(
    sending_scheduler: LockedDatabaseScheduler, redis_db: int, settings: Any
) -> None:
    # A tick reads the schedule from the database after it checks the lease: a beat frozen
    # in between (a GC pause, a stopped VM) wakes with a due entry and a lease another
    # beat now holds. Driven in process, so the pause lands exactly there.
    scheduler = sending_scheduler
    sent = len(queued(redis_db, "probe"))

    # The lease lapsed while it was frozen and another beat took it.
    redis.Redis.from_url(redis_url(redis_db)).set(settings.CARILLON_BEAT_LOCK_KEY, "another-beat", px=3000)
    scheduler.apply_entry(scheduler.schedule["probe"], producer=scheduler.producer)

    assert len(queued(redis_db, "probe")) == sent
    assert not scheduler.holding_lock


def test_a_closed_beat_never_takes_the_lock_back_and_its_next_tick_ends_it(
    sending_scheduler: LockedDatabaseScheduler, redis_db: int, settings: Any
) -> None:
    # Beat's stop signal closes the scheduler and raises SystemExit; when the signal lands
    # in a finalizer Python swallows that SystemExit and beat's loop ticks again. Driven
    # in process: close, then the tick that follows.
    scheduler = sending_scheduler
    sent = len(queued(redis_db, "probe"))

    scheduler.close()
    with pytest.raises(SystemExit):
        scheduler.tick()

    assert redis.Redis.from_url(redis_url(redis_db)).get(settings.CARILLON_BEAT_LOCK_KEY) is None
    assert not scheduler.holding_lock
    assert len(queued(redis_db, "probe")) == sent


def test_a_beat_stopped_cleanly_hands_over_at_once(start_beat: Callable[..., ManagedProcess], redis_db: int) -> None:
    every_second("probe")
    first = start_beat("beat-first")
    first.wait_for_log("took the lock")
    second = start_beat("beat-second", CARILLON_BEAT_LOCK_TIMEOUT_SECONDS="600")
    wait_for(lambda: len(queued(redis_db, "probe")) >= 2, "sends")

    first.stop()  # SIGTERM: beat closes its scheduler, which releases the lock

    assert "released the lock" in first.log()
    assert first.process.returncode != -signal.SIGKILL, "beat went on after its stop signal and was killed"
    wait_for(lambda: second.process.pid in {sender_pid(m) for m in queued(redis_db, "probe")}, "second sends")
    # The second renews a 600 s lease: it took over because the lock was released.
    assert redis.Redis.from_url(redis_url(redis_db)).ttl(settings.CARILLON_BEAT_LOCK_KEY) > 60


# --- The jobs, run by the real worker ------------------------------------------------


def make_user(username: str, frequency: str = "daily") -> Any:
    return recipient_user(username, digest_frequency=frequency)


def notify(user: Any, title: str, created_at: datetime, *, read: bool = False) -> None:
    notification = Notification.objects.create(user=user, kind="video.liked", title=title)
    Notification.objects.filter(pk=notification.pk).update(
        created_at=created_at, read_at=created_at if read else None
    )


def test_digest_started_by_beat_emails_exactly_the_unread_notifications_of_the_day_once(
    start_beat: Callable[..., ManagedProcess],
    start_background_worker: Callable[..., ManagedProcess],
    sandbox: SandboxClient,
) -> None:
    ada, bo = make_user("ada"), make_user("bo", frequency="off")
    midnight = datetime.combine(timezone.now().astimezone(UTC).date(), datetime.min.time(), tzinfo=UTC)
    yesterday = midnight - timedelta(days=1)
    notify(ada, "two days ago", yesterday - timedelta(minutes=1))
    notify(ada, "yesterday morning", yesterday + timedelta(hours=8))
    notify(ada, "read yesterday", yesterday + timedelta(hours=9), read=True)
    notify(ada, "yesterday night", midnight - timedelta(seconds=1))
    notify(ada, "today", midnight)
    notify(bo, "bo takes no digest", yesterday + timedelta(hours=8))
    start_background_worker(CARILLON_DIGEST_TIME_ZONE="UTC")
    PeriodicTask.objects.create(
        name="digests now", task="background.digests_send_due", one_off=True,
        clocked=ClockedSchedule.objects.create(clocked_time=timezone.now()),
    )
    start_beat("beat-digest")

    [email] = sandbox.wait_for("email", 1)
    wait_for(lambda: Digest.objects.filter(status="sent").exists(), "the digest recorded as sent")

    assert email["rcpt_to"] == ["ada@example.com"]
    assert email["subject"] == "2 unread notifications on Carillon"
    listed = [line for line in email["text"].splitlines() if line.startswith("- ")]
    assert [line[2:].split(" (")[0] for line in listed] == ["yesterday morning", "yesterday night"]
    # Run again (beat sent it twice, or an operator did): nothing is due, nothing sent.
    assert digest_due_user_ids() == [] and digest_prepare(user_id=ada.pk) is None
    assert Digest.objects.count() == 1 and len(sandbox.received("email")) == 1


def test_a_failing_background_job_is_a_non_critical_failed_job(
    start_background_worker: Callable[..., ManagedProcess], redis_db: int, sandbox: SandboxClient
) -> None:
    ada = make_user("ada")
    today = datetime.combine(timezone.now().astimezone(UTC).date(), datetime.min.time(), tzinfo=UTC)
    notify(ada, "unread", today)
    digest = digest_prepare(user_id=ada.pk, now=today + timedelta(days=1))
    assert digest is not None
    sandbox.set_knobs("email", fail_next=1, error_status=550)  # a permanent SMTP refusal
    start_background_worker()

    send_to(redis_db, digest_send_one, digest.pk)

    failed = wait_for(lambda: FailedJob.objects.filter(task_name="background.digest_send").first(), "a failed job")
    assert (failed.critical, failed.queue, failed.args, failed.error_class) == (
        False, "background", [digest.pk], "ProviderPermanentError",
    )
    assert "550" in failed.error_message
    assert Digest.objects.get(pk=digest.pk).status == "pending"  # the next run of the job sends it
    assert sandbox.received("email") == []


def test_cleanup_by_the_worker_keeps_what_is_still_needed(
    start_background_worker: Callable[..., ManagedProcess], redis_db: int
) -> None:
    long_ago = timezone.now() - timedelta(days=400)
    event = Event.objects.create(type="video.liked", version=1, occurred_at=long_ago, data={})
    done, undelivered, sending = (
        Delivery.objects.create(event=event, subscriber="s", channel="inapp", recipient=f"user:{n}", status=status)
        for n, status in enumerate(["sent", "pending", "sending"])
    )
    published = OutboxMessage.objects.create(event=event, kind="envelope", payload={}, published_at=long_ago)
    unpublished = OutboxMessage.objects.create(event=event, kind="envelope", payload={})
    Delivery.objects.update(updated_at=long_ago)
    OutboxMessage.objects.update(created_at=long_ago)
    start_background_worker()

    send_to(redis_db, cleanup)

    wait_for(lambda: not Delivery.objects.filter(pk=done.pk).exists(), "the finished delivery deleted")
    wait_for(lambda: not OutboxMessage.objects.filter(pk=published.pk).exists(), "the published row deleted")
    assert set(Delivery.objects.values_list("pk", flat=True)) == {undelivered.pk, sending.pk}
    assert list(OutboxMessage.objects.values_list("pk", flat=True)) == [unpublished.pk]


def test_history_trim_removes_only_messages_past_the_age_limit() -> None:
    client = redis.Redis.from_url(settings.REALTIME_REDIS_URL)
    key = "carillon:rt:hist:room:trim-test"
    now_ms = int(time.time() * 1000)
    old_ms = now_ms - (settings.REALTIME_HISTORY_MAX_AGE_SECONDS + 60) * 1000
    # As a history written when the age limit was longer: its key has no near expiry.
    client.delete(key)
    client.zadd(key, {
        json.dumps({"id": 1, "ts": old_ms, "topic": "room:trim-test", "event": "e", "data": 1}): 1,
        json.dumps({"id": 2, "ts": now_ms, "topic": "room:trim-test", "event": "e", "data": 2}): 2,
    })

    removed = history_trim_expired(client)

    assert removed >= 1
    kept = cast(list[bytes], client.zrange(key, 0, -1))
    assert [json.loads(m)["id"] for m in kept] == [2]
    client.delete(key)


def test_built_in_schedules_exist_after_migrating(django_db_setup: None) -> None:
    # A transactional test database is emptied between tests: migrate's rows may be gone.
    from django.core.management import call_command

    call_command("migrate", "notifications", "0002", verbosity=0)
    call_command("migrate", "notifications", verbosity=0)

    background_app.loader.import_default_modules()
    schedules = {task.name: task for task in PeriodicTask.objects.select_related("crontab", "interval", "clocked")}
    assert schedules["digests: daily at 07:00"].crontab.hour == "7"
    assert str(schedules["digests: daily at 07:00"].crontab.timezone) == settings.TIME_ZONE
    assert schedules["dead-letter drain: every 5 minutes"].interval.every == 5
    assert schedules["clean-up: once after install"].one_off
    assert {task.task for task in schedules.values()} <= set(background_app.tasks)
    assert PeriodicTasks.last_change() is not None
