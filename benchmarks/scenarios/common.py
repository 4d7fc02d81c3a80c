"""What scenarios share: the bench user's token, the run's own Redis, and the latency of
Carillon's deliveries from their events' publish."""

import os
import time
from typing import Any
from uuid import UUID

from django.conf import settings

from benchmarks.hdr import (
    HdrHistogram,
    histogram_encode,
    histogram_new,
    histogram_percentiles_ms,
    histogram_record,
)


def bench_token() -> str:
    """A token for the benchmark's user (created in the run's own database)."""
    from django.contrib.auth import get_user_model

    from realtime.auth import realtime_token_create

    user, _ = get_user_model().objects.get_or_create(username="bench", defaults={"email": "bench@example.com"})
    return realtime_token_create(user_id=user.pk)


def redis_url() -> str:
    return str(settings.REALTIME_REDIS_URL)


def redis_pid() -> int:
    """The pid of the run's own Redis (started by the command before this process)."""
    return int(os.environ["CARILLON_BENCH_REDIS_PID"])


def deliveries_received(stamps: list[tuple[UUID, float, float]], all_events: list[UUID], *, per_event: int,
                        timeout: float = 120.0) -> dict[str, Any]:
    """Wait until the `per_event` deliveries of every event published are sent (warm-up
    included); histogram the measured ones (`stamps`: event, scheduled, published) from
    their scheduled time, and where each waited, per channel ("whole way": from the
    scheduled time to the provider, as the overall latency)."""
    from notifications.models import Delivery

    by_event = {event_id: (due, sent) for event_id, due, sent in stamps}
    deadline = time.monotonic() + timeout
    while True:
        done = Delivery.objects.filter(event_id__in=all_events, sent_at__isnull=False).count()
        if done >= len(all_events) * per_event or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    # Accepted by the provider: "sent", or already moved on by its status callback.
    rows = Delivery.objects.filter(event_id__in=list(by_event), sent_at__isnull=False).values_list(
        "event_id", "channel", "event__created_at", "created_at", "attempt_started_at", "sent_at")
    latency, service = histogram_new(), histogram_new()
    stages: dict[str, dict[str, HdrHistogram]] = {}
    received = 0
    for event_id, channel, event_created, created, started, sent_at in rows:
        if sent_at is None:  # filtered out above; typed as optional all the same
            continue
        received += 1
        due, sent = by_event[event_id]
        histogram_record(latency, sent_at.timestamp() - due)
        histogram_record(service, sent_at.timestamp() - sent)
        # The whole way, per channel: the pipeline's latency goal is for email, SMS and
        # in-app; analytics wait for their batch window by design.
        histogram_record(stages.setdefault(channel, {}).setdefault("whole way", histogram_new()), sent_at.timestamp() - due)
        # Where a delivery waited, per channel (a stage without its stamp is skipped).
        moments = [(name, at.timestamp()) for name, at in [
            ("event row", event_created), ("delivery row", created), ("attempt start", started),
            ("provider accepted", sent_at)] if at is not None]
        for (_, before), (name, after) in zip([("publish", sent), *moments[:-1]], moments, strict=True):
            histogram_record(stages.setdefault(channel, {}).setdefault(name, histogram_new()), after - before)
    failed = Delivery.objects.filter(event_id__in=list(by_event), sent_at__isnull=True).count()
    return {"latency": histogram_encode(latency), "service": histogram_encode(service), "sent": 0,
            "received": received, "errors": failed,
            "stages_ms": {channel: {name: _p50_p99(h) for name, h in hists.items()} for channel, hists in stages.items()}}


def _p50_p99(histogram: HdrHistogram) -> dict[str, float | None]:
    every = histogram_percentiles_ms(histogram)
    return {"p50": every["p50"], "p99": every["p99"]}
