"""Prometheus metrics of the critical path, computed at scrape time from RabbitMQ's
management API and the database (so every web process reports the same numbers and
nothing needs multiprocess counters)."""

import logging
from collections.abc import Iterator
from datetime import timedelta
from typing import Any
from urllib.parse import quote, urlsplit

import requests
from django.conf import settings
from django.db.models import Count, Exists, F, Min, OuterRef, Sum
from django.utils import timezone
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from config.env import broker_urls
from notifications.models import Delivery, FailedJob, OutboxMessage
from notifications.services.delivery_status import FINAL_STATUSES

logger = logging.getLogger(__name__)

# Latency and error ratios are over the deliveries of this recent window.
RECENT = timedelta(minutes=5)


def _rabbitmq_queues() -> list[dict[str, Any]]:
    # Every node of a cluster serves the same virtual host: the first URL names it.
    vhost = urlsplit(broker_urls(settings.RABBITMQ_URL)[0]).path[1:] or "/"
    # Every node serves the whole cluster's management API: ask them in the order given
    # (RABBITMQ_MANAGEMENT_URL may name several, ";"-separated), the first answer counts.
    error = requests.RequestException("RABBITMQ_MANAGEMENT_URL names no node")
    for base in broker_urls(settings.RABBITMQ_MANAGEMENT_URL):
        try:
            response = requests.get(
                f"{base.rstrip('/')}/queues/{quote(vhost, safe='')}",
                params={"columns": "name,messages_ready,messages_unacknowledged,consumers"}, timeout=5,
            )
            response.raise_for_status()
        except requests.RequestException as exc:
            logger.info("metrics: RabbitMQ management API at %s unreachable: %s", urlsplit(base).netloc.rpartition("@")[2], exc)
            error = exc
            continue
        return [queue for queue in response.json() if queue["name"].startswith("carillon.")]
    raise error


class CarillonCollector(Collector):
    def describe(self) -> list[Metric]:
        return []  # names are only known by querying; see collect()

    def collect(self) -> Iterator[Metric]:
        yield from self._queues()
        yield from self._outbox()
        yield from self._deliveries()
        yield from self._failed_jobs()

    def _queues(self) -> Iterator[Metric]:
        ready = GaugeMetricFamily("carillon_queue_messages_ready", "Messages waiting in a queue", labels=["queue"])
        unacked = GaugeMetricFamily(
            "carillon_queue_messages_unacked", "Messages handed to a consumer, not yet acknowledged", labels=["queue"]
        )
        consumers = GaugeMetricFamily("carillon_queue_consumers", "Consumers of a queue", labels=["queue"])
        dead = GaugeMetricFamily(
            "carillon_dead_letter_messages", "Messages in a dead-letter queue", labels=["queue"]
        )
        up = GaugeMetricFamily("carillon_rabbitmq_up", "Whether RabbitMQ's management API answered")
        try:
            queues = _rabbitmq_queues()
        except requests.RequestException as exc:
            logger.warning("metrics: RabbitMQ management API unreachable: %s", exc)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        for queue in queues:
            name = queue["name"]
            if name.endswith(".dlq"):
                dead.add_metric([name], queue.get("messages_ready", 0) + queue.get("messages_unacknowledged", 0))
                continue
            ready.add_metric([name], queue.get("messages_ready", 0))
            unacked.add_metric([name], queue.get("messages_unacknowledged", 0))
            consumers.add_metric([name], queue.get("consumers", 0))
        yield from (up, ready, unacked, consumers, dead)

    def _outbox(self) -> Iterator[Metric]:
        now = timezone.now()
        unpublished = OutboxMessage.objects.filter(published_at__isnull=True).aggregate(
            n=Count("pk"), oldest=Min("created_at")
        )
        backlog = GaugeMetricFamily("carillon_outbox_unpublished", "Outbox rows not yet on RabbitMQ")
        backlog.add_metric([], unpublished["n"])
        age = GaugeMetricFamily("carillon_outbox_oldest_age_seconds", "Age of the oldest unpublished outbox row")
        age.add_metric([], (now - unpublished["oldest"]).total_seconds() if unpublished["oldest"] else 0)
        # The oldest work per channel queue not yet done: a task published whose delivery
        # is not finished. RabbitMQ 3.10 reports no message age for quorum queues.
        finished = Delivery.objects.filter(
            event=OuterRef("event"), subscriber=OuterRef("subscriber"), status__in=FINAL_STATUSES
        )
        waiting = (
            OutboxMessage.objects.filter(kind=OutboxMessage.Kind.TASK, created_at__gte=now - timedelta(days=1))
            .exclude(Exists(finished))
            .values("queue")
            .annotate(oldest=Min("created_at"))
        )
        oldest = GaugeMetricFamily(
            "carillon_queue_oldest_work_age_seconds",
            "Age of the oldest event whose work on a channel queue is not finished",
            labels=["queue"],
        )
        for row in waiting:
            oldest.add_metric([row["queue"]], (now - row["oldest"]).total_seconds())
        yield from (backlog, age, oldest)

    def _deliveries(self) -> Iterator[Metric]:
        by_status = GaugeMetricFamily("carillon_deliveries", "Deliveries by channel and status", labels=["channel", "status"])
        for row in Delivery.objects.values("channel", "status").annotate(n=Count("pk")):
            by_status.add_metric([row["channel"], row["status"]], row["n"])
        recent = Delivery.objects.filter(updated_at__gte=timezone.now() - RECENT)
        errors = GaugeMetricFamily(
            "carillon_provider_error_ratio",
            "Share of provider attempts that failed, over deliveries of the last 5 minutes",
            labels=["channel"],
        )
        for channel, attempts in recent.values("channel").annotate(total=Sum("attempts")).values_list("channel", "total"):
            sent = recent.filter(channel=channel, sent_at__isnull=False).count()
            errors.add_metric([channel], (attempts - sent) / attempts if attempts else 0)
        latency = GaugeMetricFamily(
            "carillon_provider_latency_seconds",
            "Time from an attempt's start to the provider's acceptance, over the last 5 minutes",
            labels=["channel", "quantile"],
        )
        for channel in recent.values_list("channel", flat=True).distinct():
            durations = sorted(
                (sent - started).total_seconds()
                for started, sent in recent.filter(channel=channel, sent_at__isnull=False)
                .annotate(started=F("attempt_started_at"))
                .values_list("started", "sent_at")
                if started and sent
            )
            for quantile in (0.5, 0.9, 0.99):
                if durations:
                    latency.add_metric([channel, str(quantile)], durations[min(len(durations) - 1, int(quantile * len(durations)))])
        yield from (by_status, errors, latency)

    def _failed_jobs(self) -> Iterator[Metric]:
        jobs = GaugeMetricFamily("carillon_failed_jobs", "Failed jobs by state and criticality", labels=["state", "critical"])
        for row in FailedJob.objects.values("state", "critical").annotate(n=Count("pk")):
            jobs.add_metric([row["state"], str(row["critical"]).lower()], row["n"])
        yield jobs
