"""`pipeline`: event_publish → provider acceptance, end to end, open loop, beside a raw
kombu round trip and a raw Celery no-op task on the same broker.

Each system is asked for the same deliveries per second: R events/s of `account.created`
(3 deliveries each: SMTP email and Mixpanel at the sandbox, in-app notification) against
3R messages/s of raw kombu and 3R no-op tasks/s. Latency runs from each request's due time:
- raw kombu: persistent message published with confirms to a quorum queue → received by a
  consumer in another process (prefetch = worker concurrency);
- raw Celery: `bench_noop` task (acks_late, quorum queue) → its body runs in the worker;
- Carillon: `event_publish` in a transaction (outbox, fast path after commit) → each
  delivery's `sent_at`, written the moment the sandbox provider accepted it.
Each system's requests are published by `--loadgens` processes (1), each taking every n-th
request of the schedule, as several web processes would publish; one synchronous process
queues its own requests behind a slow one.
Worker CPU per delivery is compared too (the pipeline issue's goal: ≤ 1.5x the no-op): the
worker's CPU from the series' start until every request of it, warm-up included, was
handled, over the number of those requests.
"""

import os
import time
from typing import Any
from uuid import UUID

from django.conf import settings
from kombu import Connection, Consumer, Exchange, Queue

from benchmarks.clients import Recorder
from benchmarks.hdr import histogram_record
from benchmarks.loadgen import Link, Window, run_load, schedule, sync_open_loop
from benchmarks.runner import LOG_DIR, Options, Series, ratio, report_write
from benchmarks.scenarios.common import deliveries_received
from benchmarks.servers import cpu_seconds
from core.processes import ManagedProcess, free_port, processes_stop, python

RAW_QUEUE = Queue(
    "bench.raw",
    Exchange("carillon.tasks", type="topic", durable=True),
    routing_key="bench.raw",
    durable=True,
    queue_arguments={"x-queue-type": "quorum"},
)
CHANNEL_QUEUES = "carillon.default,carillon.email,carillon.sms,carillon.analytics,carillon.inapp"
DELIVERIES_PER_EVENT = 3  # account.created: email, analytics, in-app
# Events per second (30 deliveries per second): what 2 worker processes sustain on the
# shared 2-core machine with room to spare; past that, latency measures the backlog.
DEFAULT_RATE = 10.0
CONCURRENCY = 2


def pipeline_loadgen(config: dict[str, Any], link: Link) -> None:
    import django

    django.setup()
    {"kombu": _kombu_publish, "consume": _kombu_consume, "celery": _celery_publish,
     "carillon": _carillon_publish}[config["kind"]](config, link)


def _my_share(config: dict[str, Any], window: Window) -> list[tuple[int, float]]:
    """This publishing process's requests: every `count`-th of the schedule from `index`."""
    return schedule(rate=config["rate"], window=window, index=config["index"], count=config["count"])


def _publishers(kind: str, rate: float, count: int, **config: Any) -> list[dict[str, Any]]:
    return [{"kind": kind, "rate": rate, "index": index, "count": count, **config} for index in range(count)]


def _kombu_publish(config: dict[str, Any], link: Link) -> None:
    with Connection(settings.CELERY_BROKER_URL, transport_options={"confirm_publish": True}) as connection:
        producer = connection.Producer(serializer="json")
        link.ready()
        window = link.wait_start()
        recorder = Recorder(window)

        def send(number: int, due: float) -> None:
            producer.publish({"due": due, "sent": time.time()}, exchange=RAW_QUEUE.exchange,
                             routing_key=RAW_QUEUE.routing_key, delivery_mode=2, retry=False)
            recorder.on_sent(due)
            link.count(recorder.sent)

        sync_open_loop(_my_share(config, window), send)
    link.done({"latency": "", "service": "", "sent": recorder.sent})


def _kombu_consume(config: dict[str, Any], link: Link) -> None:
    with Connection(settings.CELERY_BROKER_URL) as connection:
        recorder: Recorder | None = None

        def on_message(body: dict[str, Any], message: Any) -> None:
            message.ack()
            if recorder is not None:
                recorder.on_received(body)

        with Consumer(connection, [RAW_QUEUE], callbacks=[on_message], prefetch_count=CONCURRENCY,
                      accept=["json"]):
            link.ready()
            window = link.wait_start()
            recorder = Recorder(window)
            while time.time() < window.end + 2.5:
                try:
                    connection.drain_events(timeout=0.5)
                except TimeoutError:
                    pass
    link.done(recorder.result(sent=0))


def _celery_publish(config: dict[str, Any], link: Link) -> None:
    from benchmarks.baseline_tasks import bench_noop
    from notifications.queues import DEFAULT_QUEUE_NAME

    bench_noop.apply_async(args=(0.0, 0.0), queue=DEFAULT_QUEUE_NAME)  # the producer's connection is up
    link.ready()
    window = link.wait_start()
    recorder = Recorder(window)

    total = 0

    def send(number: int, due: float) -> None:
        nonlocal total
        bench_noop.apply_async(args=(due, time.time()), queue=DEFAULT_QUEUE_NAME)
        recorder.on_sent(due)
        total += 1
        link.count(recorder.sent)

    sync_open_loop(_my_share(config, window), send)
    link.done({"latency": "", "service": "", "sent": recorder.sent, "total": total,
               "window": [window.measure_from, window.end]})


def _carillon_publish(config: dict[str, Any], link: Link) -> None:
    from django.db import transaction

    from notifications.services.events import event_publish

    users = config["users"]
    link.ready()
    window = link.wait_start()
    stamps: list[tuple[UUID, float, float]] = []
    errors = 0

    def send(number: int, due: float) -> None:
        nonlocal errors
        sent = time.time()
        try:
            with transaction.atomic():
                event = event_publish(type="account.created",
                                      data={"user_id": users[number % len(users)], "name": "Bench"})
        except Exception:  # noqa: BLE001 - counted, not fatal: an open-loop run goes on
            errors += 1
            return
        stamps.append((event.pk, due, sent))
        link.count(len(stamps))

    sync_open_loop(_my_share(config, window), send)
    measured = [stamp for stamp in stamps if window.measured(stamp[1])]
    link.done({"latency": "", "service": "", "sent": len(measured) * DELIVERIES_PER_EVENT, "errors": errors,
               "stamps": measured, "all_events": [stamp[0] for stamp in stamps]})


def _celery_receipts(window: tuple[float, float], total: int, timeout: float = 120.0) -> dict[str, Any]:
    """Wait until every task of the series ran (warm-up included); histogram the measured."""
    from benchmarks.baseline_tasks import RECEIPTS_KEY, _redis

    deadline = time.monotonic() + timeout
    while True:
        rows = [tuple(map(float, raw.split())) for raw in _redis().lrange(RECEIPTS_KEY, 0, -1)]
        measured = [row for row in rows if window[0] <= row[1] < window[1]]
        if len(rows) >= total or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    recorder = Recorder(Window(0.0, window[0], window[1]))
    recorder.received_in_window = sum(1 for row in rows if window[0] <= row[0] < window[1])
    for received, due, sent in measured:
        recorder.received += 1
        histogram_record(recorder.latency, received - due)
        histogram_record(recorder.service, received - sent)
    _redis().delete(RECEIPTS_KEY)
    return recorder.result(sent=0)


def pipeline_scenario(options: Options) -> list[dict[str, Any]]:
    from django.contrib.auth import get_user_model

    from config.celery import ping
    from notifications.queues import DEFAULT_QUEUE_NAME

    rate = options.rate or (10.0 if options.quick else DEFAULT_RATE)
    deliveries = rate * DELIVERIES_PER_EVENT
    loadgens = options.loadgens or 1
    http_port, smtp_port = free_port(), free_port()
    env = {"EMAIL_URL": f"smtp://127.0.0.1:{smtp_port}", "TWILIO_API_BASE_URL": f"http://127.0.0.1:{http_port}",
           "MIXPANEL_API_BASE_URL": f"http://127.0.0.1:{http_port}"}
    os.environ.update(env)  # the load generators (spawned after this) send to the same sandbox
    User = get_user_model()  # noqa: N806
    stamp = time.time_ns()
    users = [u.pk for u in User.objects.bulk_create(
        [User(username=f"bench-{stamp}-{n}", email=f"bench{n}@example.com") for n in range(500)])]
    with Connection(settings.CELERY_BROKER_URL) as connection:
        RAW_QUEUE(connection.default_channel).declare()
    processes = [
        ManagedProcess("sandbox", python("-m", "sandbox", "--http-port", str(http_port), "--smtp-port",
                                         str(smtp_port), "--log-level", "WARNING"), env=env, log_dir=LOG_DIR),
        ManagedProcess("worker", python("-m", "celery", "-A", "config.celery", "worker", "--loglevel", "WARNING",
                                        "--queues", CHANNEL_QUEUES, "--concurrency", str(CONCURRENCY),
                                        "--include", "benchmarks.baseline_tasks", "--without-mingle", "--without-gossip"),
                       env=env, log_dir=LOG_DIR),
    ]
    try:
        ping.apply_async(queue=DEFAULT_QUEUE_NAME).get(timeout=120)  # a worker answers: measure from here
        worker = [processes[1].process.pid]
        common: dict[str, Any] = {"warmup": options.warmup, "duration": options.duration}
        series = []
        results, server = run_load(pipeline_loadgen, [{"kind": "consume"}, *_publishers("kombu", deliveries, loadgens)],
                                   label="pipeline: raw kombu", server_pids=[], **common)
        series.append(Series.merged("raw kombu round trip", results, asked_rate=deliveries,
                                    seconds=options.duration, server={}))
        cpu = cpu_seconds(worker)
        results, server = run_load(pipeline_loadgen, _publishers("celery", deliveries, loadgens),
                                   label="pipeline: raw Celery no-op", server_pids=worker, **common)
        total = sum(result["total"] for result in results)
        received = _celery_receipts(results[0]["window"], total)
        cost = (cpu_seconds(worker) - cpu) / total
        series.append(Series.merged("raw Celery no-op task", [*results, received], asked_rate=deliveries,
                                    seconds=options.duration, server=server,
                                    worker_cpu_ms_per_item=round(cost * 1000, 3)))
        cpu = cpu_seconds(worker)
        results, server = run_load(pipeline_loadgen, _publishers("carillon", rate, loadgens, users=users),
                                   label="pipeline: Carillon event_publish", server_pids=worker, **common)
        stamps = [stamp for result in results for stamp in result.pop("stamps")]
        all_events = [event for result in results for event in result.pop("all_events")]
        received = deliveries_received(stamps, all_events, per_event=DELIVERIES_PER_EVENT)
        cost = (cpu_seconds(worker) - cpu) / (len(all_events) * DELIVERIES_PER_EVENT)
        series.append(Series.merged("Carillon pipeline (deliveries)", [*results, received], asked_rate=deliveries,
                                    seconds=options.duration, server=server, events_per_second_asked=rate,
                                    stages_ms=received["stages_ms"],
                                    worker_cpu_ms_per_item=round(cost * 1000, 3)))
    finally:
        processes_stop(processes)
    kombu, noop, carillon = series
    return [report_write(
        out=options.out, scenario="pipeline", label=f"{rate:g} events per s ({deliveries:g} deliveries per s)",
        series=series,
        config={"events_per_second": rate, "deliveries_per_second": deliveries, "worker_concurrency": CONCURRENCY,
                "database": str(settings.DATABASES["default"]["ENGINE"]).rsplit(".", 1)[-1],
                "publishing_processes": loadgens, "duration": options.duration, "warmup": options.warmup},
        ratios={
            "carillon_worker_cpu_per_delivery_vs_celery_noop": ratio(carillon.extra["worker_cpu_ms_per_item"],
                                                                     noop.extra["worker_cpu_ms_per_item"]),
            "carillon_p50_vs_celery_noop": ratio(carillon.latency.get_value_at_percentile(50),
                                                 noop.latency.get_value_at_percentile(50)),
            "carillon_p99_vs_celery_noop": ratio(carillon.latency.get_value_at_percentile(99),
                                                 noop.latency.get_value_at_percentile(99)),
            "celery_noop_p50_vs_kombu": ratio(noop.latency.get_value_at_percentile(50),
                                              kombu.latency.get_value_at_percentile(50)),
        },
    )]
