"""`broadcast`: one `product.announcement` to N users, planned into chunks and sent on the
bulk lane, beside N raw Celery no-op tasks on the same broker and the same kind of worker.

Not open loop: a broadcast is a burst by nature (one publish, N × channels deliveries), so
each series is timed from one start: the publish (Carillon) or the first of N no-ops
published as fast as one process's threads can (raw Celery). Latency is receipt − start: the moment
each delivery was accepted by its provider (`sent_at`), or each no-op's body ran.

- raw Celery: `bench_noop` × N (acks_late, quorum queue), published from 4 threads,
  consumed by the worker below;
- Carillon: `event_publish` in a transaction with `audience=group_members` of a fresh group
  of N users; the worker plans it into chunks of CARILLON_BROADCAST_CHUNK_SIZE and sends
  each chunk (email over one SMTP session to the sandbox, or with `--email-via postmark` in
  a request per 500 to the sandbox's Postmark batch API; in-app rows in bulk + Redis).

The bulk workers are those of `platform/Procfile` (their queues, concurrency and prefetch
read from it), on the bulk queues of the channels asked; the first also consumes
`carillon.default` (the no-ops). Their CPU per delivery is compared with the first one's
CPU per no-op (the broadcast issue's goal: ≤ 0.5x). With `--reset-rate R`, the Procfile's
critical worker, on the transactional email and SMS queues, takes the password resets
published R times a second while the broadcast runs:
their latency (publish → provider accepted, from each one's scheduled time) is the lanes'
test. The sandbox must have N distinct Message-IDs and no
duplicate, and the database N in-app notifications: the run says so, it does not assert.
"""

import logging
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Any
from uuid import UUID

from django.conf import settings
from django.db import connection, transaction
from django.db.models import Count, Max

from benchmarks.hdr import (
    histogram_encode,
    histogram_new,
    histogram_percentiles_ms,
    histogram_record,
)
from benchmarks.runner import LOG_DIR, Options, Series, ratio, report_write
from benchmarks.scenarios.common import deliveries_received
from benchmarks.servers import ProcfileWorker, cpu_seconds, procfile_workers
from core.processes import ManagedProcess, free_port, processes_stop, python

logger = logging.getLogger(__name__)

DEFAULT_RECIPIENTS = 10_000
QUICK_RECIPIENTS = 200
CHANNELS = ("inapp", "email")  # product.announcement's subscribers (notifications/subscribers.py)
NOOP_PUBLISHERS = 4
USER_BATCH = 5_000
# The goals: 100,000 recipients in ≤ 30 s in-app, ≤ 120 s email; worker CPU per
# broadcast delivery ≤ 0.5x a no-op task's.
GOAL_SECONDS_PER_100K = {"inapp": 30.0, "email": 120.0}
GOAL_CPU_RATIO = 0.5
# ... and a password reset published during a 100,000-recipient broadcast reaches its
# providers within the transactional pipeline's p99.
GOAL_RESET_P99_MS = 150.0
RESET_USERS = 50
RESET_CHANNELS = ("email", "sms")  # password.reset_requested's subscribers
FINAL = ("sent", "delivered", "undelivered", "failed", "skipped", "cancelled")


def _audience_create(recipients: int) -> tuple[str, list[int]]:
    """N fresh users with emails in one fresh auth group; answer the group's name and ids."""
    from django.contrib.auth import get_user_model
    from django.contrib.auth.models import Group

    User = get_user_model()  # noqa: N806
    stamp = time.time_ns()
    group = Group.objects.create(name=f"bench-broadcast-{stamp}")
    ids: list[int] = []
    for start in range(0, recipients, USER_BATCH):
        users = User.objects.bulk_create(
            [User(username=f"bcast-{stamp}-{n}", email=f"bcast{n}.{stamp}@example.com")
             for n in range(start, min(start + USER_BATCH, recipients))]
        )
        ids += [user.pk for user in users]
        User.groups.through.objects.bulk_create(
            [User.groups.through(user_id=user.pk, group_id=group.pk) for user in users]
        )
    _statistics_refresh([User._meta.db_table, Group._meta.db_table, User.groups.through._meta.db_table])
    return group.name, ids


def _statistics_refresh(tables: list[str]) -> None:
    """What docs/operations.md asks of an operator who bulk-loads an audience: PostgreSQL
    plans each page of recipients from its statistics, and rows written a moment ago have
    none until autovacuum's next pass (a page then reads the whole membership table)."""
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("ANALYZE " + ", ".join(connection.ops.quote_name(table) for table in tables))


def _reset_users_create() -> list[int]:
    """Users outside the audience, with an email and a phone number, for the resets."""
    from django.contrib.auth import get_user_model

    from notifications.models import Recipient

    stamp = time.time_ns()
    users = get_user_model().objects.bulk_create(
        [get_user_model()(username=f"reset-{stamp}-{n}", email=f"reset{n}.{stamp}@example.com")
         for n in range(RESET_USERS)])
    Recipient.objects.bulk_create(
        [Recipient(user_id=user.pk, phone_number=f"+1555{n:07d}") for n, user in enumerate(users)])
    return [user.pk for user in users]


def _noop_series(recipients: int, worker: list[int]) -> tuple[Series, float]:
    """N no-op tasks published at once; each one's receipt − the burst's start."""
    from benchmarks.baseline_tasks import RECEIPTS_KEY, _redis, bench_noop
    from notifications.queues import DEFAULT_QUEUE_NAME

    def publish(count: int) -> None:
        for _ in range(count):
            bench_noop.apply_async(args=(start, time.time()), queue=DEFAULT_QUEUE_NAME)

    _redis().delete(RECEIPTS_KEY)
    cpu = cpu_seconds(worker)
    start = time.time()
    # Each publish waits for RabbitMQ's confirm: from one thread 100,000 took ~9 minutes,
    # longer than the broadcast it stands beside. Threads overlap the waits (Celery's
    # producer pool gives each its own channel); the worker's CPU per task is unchanged.
    with ThreadPoolExecutor(NOOP_PUBLISHERS) as pool:
        for done in [pool.submit(publish, recipients // NOOP_PUBLISHERS + (n < recipients % NOOP_PUBLISHERS))
                     for n in range(NOOP_PUBLISHERS)]:
            done.result()
    published = time.time() - start
    deadline = time.monotonic() + 60 + recipients / 100
    while _redis().llen(RECEIPTS_KEY) < recipients and time.monotonic() < deadline:
        time.sleep(0.2)
    used = cpu_seconds(worker) - cpu
    rows = [tuple(map(float, raw.split())) for raw in _redis().lrange(RECEIPTS_KEY, 0, -1)]
    _redis().delete(RECEIPTS_KEY)
    latency = histogram_new()
    for received, _, _ in rows:
        histogram_record(latency, received - start)
    last = max((row[0] for row in rows), default=start) - start
    series = Series.merged(
        "raw Celery no-op task", [{"latency": histogram_encode(latency), "sent": recipients, "received": len(rows)}],
        asked_rate=0.0, seconds=last, server={"cpu_seconds": round(used, 3), "processes": len(worker)},
        worker_cpu_ms_per_item=round(used / max(len(rows), 1) * 1000, 3), seconds_to_last=round(last, 2),
        publish_seconds=round(published, 2), missing=recipients - len(rows),
    )
    return series, used / max(len(rows), 1)


class _Resets(threading.Thread):
    """password.reset_requested at `rate` a second, open loop, until stopped; each event
    stamped with its scheduled time (a late publish counts against the latency)."""

    def __init__(self, users: list[int], rate: float) -> None:
        super().__init__(name="resets", daemon=True)
        self.users, self.rate = users, rate
        self.stamps: list[tuple[UUID, float, float]] = []  # event, scheduled, published
        self.stopping = threading.Event()

    def run(self) -> None:
        from notifications.services.events import event_publish

        due = time.time()
        try:
            while not self.stopping.wait(max(0.0, due - time.time())):
                user = self.users[len(self.stamps) % len(self.users)]
                published = time.time()
                with transaction.atomic():
                    event = event_publish(type="password.reset_requested",
                                          data={"user_id": user, "reset_url": "https://example.com/reset"})
                self.stamps.append((event.pk, due, published))
                due += 1.0 / self.rate
        finally:
            connection.close()  # this thread's own


def _resets_series(resets: _Resets) -> Series:
    """Each reset's deliveries: accepted by their provider − the reset's scheduled time."""
    from notifications.models import Delivery

    received = deliveries_received(resets.stamps, [stamp[0] for stamp in resets.stamps], per_event=len(RESET_CHANNELS))
    seconds = (resets.stamps[-1][1] - resets.stamps[0][1]) if resets.stamps else 0.0
    emails = Delivery.objects.filter(event_id__in=[stamp[0] for stamp in resets.stamps], channel="email",
                                     sent_at__isnull=False).count()
    return Series.merged(
        "password reset during the broadcast", [{**received, "sent": len(resets.stamps) * len(RESET_CHANNELS)}],
        asked_rate=resets.rate * len(RESET_CHANNELS), seconds=seconds, server={}, channels=list(RESET_CHANNELS),
        stages_ms=received["stages_ms"], emails_sent=emails,
    )


def _progress_poll(event: Any, *, channels: list[str], recipients: int, start: float,
                   timeout: float) -> list[dict[str, Any]]:
    """event_progress every second until every channel's N deliveries are final (or the timeout)."""
    from notifications.selectors import event_progress

    points: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    while True:
        progress = event_progress(event=event)
        points.append({"t": round(time.time() - start, 2),
                       **{channel: {k: v for k, v in progress.get(channel, {}).items() if v} for channel in channels}})
        done = all(
            sum(progress.get(channel, {}).get(status, 0) for status in FINAL) >= recipients for channel in channels
        )
        if done or time.monotonic() > deadline:
            return points
        time.sleep(1.0)


def _carillon_series(*, group: str, recipients: int, channels: list[str], worker: list[int],
                     timeout: float, resets: _Resets | None) -> tuple[list[Series], float, dict[str, Any]]:
    from notifications.models import Delivery, Event, Notification
    from notifications.services.events import event_publish

    cpu = cpu_seconds(worker)
    start = time.time()
    with transaction.atomic():
        event: Event = event_publish(
            type="product.announcement",
            data={"title": "Carillon bench", "body": "One announcement to the whole group."},
            audience={"audience": "group_members", "params": {"group": group}},
        )
    if resets is not None:
        resets.start()
    try:
        points = _progress_poll(event, channels=channels, recipients=recipients, start=start, timeout=timeout)
    finally:
        if resets is not None:
            resets.stopping.set()
            resets.join()
    used = cpu_seconds(worker) - cpu
    series: list[Series] = []
    total_sent = 0
    for channel in channels:
        rows = Delivery.objects.filter(event=event, channel=channel, status=Delivery.Status.SENT)
        latency = histogram_new()
        for sent_at in rows.values_list("sent_at", flat=True).iterator(chunk_size=5000):
            if sent_at is not None:  # SENT rows have one
                histogram_record(latency, sent_at.timestamp() - start)
        sent = rows.count()
        total_sent += sent
        last = rows.aggregate(last=Max("sent_at"))["last"]
        seconds = (last.timestamp() - start) if last else 0.0
        statuses = dict(Delivery.objects.filter(event=event, channel=channel).values_list("status").annotate(
            n=Count("id")).order_by())
        series.append(Series.merged(
            f"Carillon broadcast {channel}",
            [{"latency": histogram_encode(latency), "sent": recipients, "received": sent,
              "errors": recipients - sent}],
            asked_rate=0.0, seconds=seconds, server={"cpu_seconds": round(used, 3), "processes": len(worker)},
            seconds_to_last=round(seconds, 2), statuses=statuses,
            goal_seconds=round(GOAL_SECONDS_PER_100K[channel] * recipients / 100_000, 2),
        ))
    checks: dict[str, Any] = {"event": str(event.pk), "progress": points, "worker_cpu_seconds": round(used, 3),
                              "deliveries_sent": total_sent}
    if "inapp" in channels:
        notifications = Notification.objects.filter(event=event)
        checks["inapp_notifications"] = notifications.count()
        checks["inapp_distinct_users"] = notifications.values("user_id").distinct().count()
    return series, used / (recipients * len(channels)), checks


def _workers(queues: set[str]) -> list[ProcfileWorker]:
    """The Procfile's workers that consume any of these queues, each on those alone."""
    return [replace(worker, queues=tuple(queue for queue in worker.queues if queue in queues))
            for worker in procfile_workers() if queues & set(worker.queues)]


def broadcast_scenario(options: Options) -> list[dict[str, Any]]:
    from config.celery import ping
    from notifications.queues import DEFAULT_QUEUE_NAME, channel_queue_name
    from sandbox.client import SandboxClient

    recipients = options.recipients or (QUICK_RECIPIENTS if options.quick else DEFAULT_RECIPIENTS)
    channels = list(options.channels or CHANNELS)
    unknown = sorted(set(channels) - set(CHANNELS))
    if unknown:
        raise ValueError(f"--channels: product.announcement has no subscriber on {', '.join(unknown)}; "
                         f"choose among {', '.join(CHANNELS)}")
    chunk_size = options.chunk_size or settings.CARILLON_BROADCAST_CHUNK_SIZE
    database = str(settings.DATABASES["default"]["ENGINE"]).rsplit(".", 1)[-1]
    http_port, smtp_port = free_port(), free_port()
    env = {"EMAIL_URL": f"smtp://127.0.0.1:{smtp_port}", "TWILIO_API_BASE_URL": f"http://127.0.0.1:{http_port}",
           "MIXPANEL_API_BASE_URL": f"http://127.0.0.1:{http_port}",
           "CARILLON_BROADCAST_CHUNK_SIZE": str(chunk_size)}
    if options.email_via == "postmark":
        env |= {"POSTMARK_SERVER_TOKEN": "sandbox-postmark-token", "POSTMARK_API_BASE_URL": f"http://127.0.0.1:{http_port}"}
    os.environ.update(env)
    started = time.monotonic()
    group, _ = _audience_create(recipients)
    reset_users = _reset_users_create() if options.reset_rate else []
    setup_seconds = time.monotonic() - started
    # The workers as platform/Procfile runs them, on the queues this run uses: the bulk
    # lane's (the first of them also takes the no-ops) and, with resets, the transactional.
    bulk = _workers({channel_queue_name(channel, "bulk") for channel in channels})
    critical = _workers({channel_queue_name(channel) for channel in RESET_CHANNELS}) if options.reset_rate else []
    processes = [
        ManagedProcess("sandbox", python("-m", "sandbox", "--http-port", str(http_port), "--smtp-port",
                                         str(smtp_port), "--log-level", "WARNING"), env=env, log_dir=LOG_DIR),
        *(ManagedProcess(worker.name, worker.command(*([DEFAULT_QUEUE_NAME] if i == 0 else [])), env=env,
                         log_dir=LOG_DIR) for i, worker in enumerate(bulk)),
        *(ManagedProcess(worker.name, worker.command(), env=env, log_dir=LOG_DIR) for worker in critical),
    ]
    try:
        ping.apply_async(queue=DEFAULT_QUEUE_NAME).get(timeout=120)  # a worker answers: measure from here
        if options.reset_rate:  # and the resets' worker, before the first reset is due
            ping.apply_async(queue=channel_queue_name(RESET_CHANNELS[0])).get(timeout=120)
        worker = [process.process.pid for process in processes[1:1 + len(bulk)]]
        sandbox = SandboxClient(f"http://127.0.0.1:{http_port}", smtp_port=smtp_port)
        load_before = os.getloadavg()
        noop, noop_cpu = _noop_series(options.baseline_tasks or recipients, worker[:1])
        timeout = max(120.0, recipients * len(channels) / 50)
        resets = _Resets(reset_users, options.reset_rate) if options.reset_rate else None
        carillon, carillon_cpu, checks = _carillon_series(group=group, recipients=recipients, channels=channels,
                                                          worker=worker, timeout=timeout, resets=resets)
        during = [_resets_series(resets)] if resets is not None else []
        load_after = os.getloadavg()
        if "email" in channels:
            inbox = sandbox.http.get(f"{sandbox.url}/api/received/email", params={"limit": 0}, timeout=30).json()
            # The same sandbox took the resets' emails: the broadcast's are the rest.
            resets_emails = sum(item.extra["emails_sent"] for item in during)
            checks["email_accepted_distinct_message_ids"] = inbox["email"]["accepted"] - resets_emails
            checks["email_duplicates"] = inbox["email"]["duplicates"]
    finally:
        processes_stop(processes)
    checks["exact"] = (checks.get("email_accepted_distinct_message_ids", recipients) == recipients
                       and checks.get("email_duplicates", 0) == 0
                       and checks.get("inapp_notifications", recipients) == recipients
                       and checks.get("inapp_distinct_users", recipients) == recipients)
    last = max(item.extra["seconds_to_last"] for item in carillon)
    cpu_ratio = ratio(carillon_cpu, noop_cpu)
    goals = {
        f"{channel}: {recipients:,} recipients in <= {item.extra['goal_seconds']:g} s (100k in "
        f"{GOAL_SECONDS_PER_100K[channel]:g} s)": {
            "measured_seconds": item.extra["seconds_to_last"],
            "met": item.received == recipients and item.extra["seconds_to_last"] <= item.extra["goal_seconds"],
        }
        for channel, item in zip(channels, carillon, strict=True)
    }
    goals[f"worker CPU per delivery <= {GOAL_CPU_RATIO}x a no-op task"] = {
        "measured_ratio": cpu_ratio, "met": cpu_ratio is not None and cpu_ratio <= GOAL_CPU_RATIO,
    }
    for item in during:
        p99 = histogram_percentiles_ms(item.latency)["p99"]
        goals[f"password reset during the broadcast: publish -> provider p99 <= {GOAL_RESET_P99_MS:g} ms"] = {
            "measured_ms": p99, "met": item.errors == 0 and p99 is not None and p99 <= GOAL_RESET_P99_MS,
        }
    summary = report_write(
        out=options.out, scenario="broadcast",
        label=f"{recipients} recipients, {'+'.join(channels)}, chunks of {chunk_size}, email by {options.email_via}, {database}",
        series=[*carillon, noop, *during],
        config={"recipients": recipients, "channels": channels, "chunk_size": chunk_size, "database": database,
                "email_via": options.email_via, "baseline_tasks": options.baseline_tasks or recipients,
                "reset_rate": options.reset_rate,
                "workers": {worker.name: " ".join(worker.shape) for worker in [*bulk, *critical]},
                "setup_seconds": round(setup_seconds, 1),
                "load_average_before": [round(x, 2) for x in load_before],
                "load_average_after": [round(x, 2) for x in load_after]},
        ratios={
            "carillon_worker_cpu_per_delivery_vs_celery_noop": cpu_ratio,
            "carillon_worker_cpu_ms_per_delivery": round(carillon_cpu * 1000, 3),
            "celery_noop_worker_cpu_ms_per_task": round(noop_cpu * 1000, 3),
            "carillon_deliveries_per_second": round(checks["deliveries_sent"] / last, 1) if last else None,
            "carillon_seconds_to_last_delivery": last,
            "celery_noop_seconds_to_last_task": noop.extra["seconds_to_last"],
            "carillon_seconds_to_last_vs_celery_noop": ratio(last, noop.extra["seconds_to_last"]),
        },
        extra={"checks": checks, "goals": goals},
    )
    logger.info("broadcast %d x %s: %s", recipients, channels, summary["ratios"])
    return [summary]
