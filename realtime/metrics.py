"""Prometheus metrics of the realtime side, read at scrape time from the counters each
server process keeps in Redis (so any web process reports every process's numbers)."""

import logging
from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from redis.exceptions import RedisError

from realtime.services import sync_client
from realtime.topics import STATS_PROCESS_PATTERN, STATS_PUBLISHED_KEY

logger = logging.getLogger(__name__)


class RealtimeCollector(Collector):
    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("carillon_realtime_redis_up", "Whether the realtime Redis answered")
        connections = GaugeMetricFamily(
            "carillon_realtime_connections", "Open WebSocket and SSE connections", labels=["process"]
        )
        delivered = CounterMetricFamily(
            "carillon_realtime_delivered", "Messages sent to connections (live and replayed)", labels=["process"]
        )
        published = CounterMetricFamily("carillon_realtime_published", "Messages published to topics")
        client = sync_client()
        try:
            keys = sorted(client.scan_iter(match=STATS_PROCESS_PATTERN, count=500))
            rows = [(key, client.hgetall(key)) for key in keys]
            published_total = int(client.get(STATS_PUBLISHED_KEY) or 0)
        except RedisError as exc:
            logger.warning("metrics: realtime Redis unreachable: %s", exc)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        for key, stats in rows:
            process = key.decode().removeprefix(STATS_PROCESS_PATTERN.rstrip("*"))  # host:pid
            connections.add_metric([process], int(stats.get(b"connections", 0)))
            delivered.add_metric([process], int(stats.get(b"delivered", 0)))
        published.add_metric([], published_total)
        yield from (up, connections, delivered, published)
