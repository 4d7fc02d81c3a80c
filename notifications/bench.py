"""The `pipeline` benchmark: events through Carillon beside raw kombu and a raw Celery
no-op task, on the same broker, in the same run.

It measures throughput (a batch of N, timed from the first publish to the last
completion) and, for the pipeline, the latency of each delivery from its event's commit
to the provider's acceptance. The open-loop, fixed-rate latency benchmarks of seed 001
belong to `manage.py bench` scenarios that arrive with the benchmarks issue.
"""

import json
import multiprocessing
import os
import platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import transaction
from hdrh.histogram import HdrHistogram
from kombu import Connection

from config.celery import noop, ping
from notifications.models import Delivery
from notifications.queues import DEFAULT_QUEUE_NAME
from notifications.rawbench import RAW_QUEUE, raw_consume
from notifications.services import event_publish


@dataclass
class Throughput:
    name: str
    items: int
    seconds: float

    @property
    def per_second(self) -> float:
        return self.items / self.seconds

    def row(self) -> dict[str, Any]:
        return {**asdict(self), "per_second": round(self.per_second, 1)}


def bench_raw_kombu(*, count: int, prefetch: int) -> Throughput:
    """Persistent messages published with confirms to a quorum queue, consumed and acked
    one by one by another process: the floor under any Celery-based pipeline."""
    url = settings.CELERY_BROKER_URL
    with Connection(url) as connection:
        RAW_QUEUE(connection.default_channel).declare()
    # spawn, not fork: a forked child would share (and close) this process's broker sockets.
    context = multiprocessing.get_context("spawn")
    done: Any = context.Queue()
    consumer = context.Process(target=raw_consume, args=(url, count, prefetch, done))
    consumer.start()
    done.get(timeout=60)
    with Connection(url, transport_options={"confirm_publish": True}) as connection:
        producer = connection.Producer(serializer="json")
        started = time.perf_counter()
        for index in range(count):
            producer.publish(
                {"n": index}, exchange=RAW_QUEUE.exchange, routing_key=RAW_QUEUE.routing_key, delivery_mode=2,
                retry=False,
            )
    finished = done.get(timeout=600)
    consumer.join(30)
    return Throughput("raw kombu publish+consume", count, finished - started)


def bench_celery_noop(*, count: int) -> Throughput:
    """No-op tasks through the critical app's worker (acks_late, quorum queue); a final
    ping, answered after the no-ops ahead of it in the queue, marks the end."""
    started = time.perf_counter()
    for _ in range(count):
        noop.apply_async(queue=DEFAULT_QUEUE_NAME)
    ping.apply_async(queue=DEFAULT_QUEUE_NAME).get(timeout=600)
    return Throughput("raw Celery no-op task", count, time.perf_counter() - started)


def bench_pipeline(*, events: int) -> tuple[Throughput, HdrHistogram]:
    """account.created events (email + analytics + in-app each) from event_publish to
    every delivery sent, through the relay's fast path, the workers and the sandbox."""
    users = get_user_model().objects.bulk_create(
        [get_user_model()(username=f"bench-{time.time_ns()}-{n}", email=f"bench{n}@example.com") for n in range(events)]
    )
    expected = 3 * events
    started = time.perf_counter()
    for user in users:
        with transaction.atomic():
            event_publish(type="account.created", data={"user_id": user.pk, "name": "Bench"})
    while Delivery.objects.filter(status=Delivery.Status.SENT).count() < expected:
        time.sleep(0.05)
    elapsed = time.perf_counter() - started
    # Commit-to-provider latency of each delivery, in microseconds.
    latency = HdrHistogram(1, 600_000_000, 3)
    for created, sent in Delivery.objects.values_list("event__created_at", "sent_at"):
        if sent is not None:
            latency.record_value(max(1, int((sent - created).total_seconds() * 1_000_000)))
    return Throughput("Carillon pipeline (deliveries)", expected, elapsed), latency


def bench_pipeline_scenario(*, events: int, concurrency: int, out: Path) -> dict[str, Any]:
    """Run the three measurements in one process against one broker; write the results."""
    # The workers start beside this process: measure nothing before one of them answers.
    ping.apply_async(queue=DEFAULT_QUEUE_NAME).get(timeout=120)
    raw = bench_raw_kombu(count=events * 3, prefetch=concurrency)
    celery_noop = bench_celery_noop(count=events * 3)
    pipeline, latency = bench_pipeline(events=events)
    ratio = (pipeline.seconds / pipeline.items) / (celery_noop.seconds / celery_noop.items)
    summary = {
        "scenario": "pipeline",
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "system": platform.platform()},
        "database": str(settings.DATABASES["default"]["ENGINE"]).rsplit(".", 1)[-1],
        "worker_concurrency": concurrency,
        "events": events,
        "results": [raw.row(), celery_noop.row(), pipeline.row()],
        "pipeline_events_per_second": round(events / pipeline.seconds, 1),
        "pipeline_cost_per_delivery_vs_celery_noop": round(ratio, 2),
        "pipeline_latency_ms": {
            f"p{p}": round(latency.get_value_at_percentile(p) / 1000, 1) for p in (50, 90, 99, 99.9, 100)
        },
    }
    out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    (out / f"pipeline-{stamp}.json").write_text(json.dumps(summary, indent=2))
    with (out / f"pipeline-{stamp}.hgrm").open("wb") as hgrm:
        latency.output_percentile_distribution(hgrm, 1000.0)  # in milliseconds
    return summary
