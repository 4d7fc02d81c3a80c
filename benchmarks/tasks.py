"""The raw Celery baseline of `manage.py bench pipeline`: a task that does nothing but note
when it ran. Bench workers load it with `--include benchmarks.tasks`; Carillon's own
workers never do."""

import time
from functools import cache

import redis
from django.conf import settings

from config.celery import app

RECEIPTS_KEY = "bench:celery:receipts"


@cache
def _redis() -> redis.Redis:
    return redis.Redis.from_url(settings.REALTIME_REDIS_URL)


@app.task(name="carillon.bench_noop", ignore_result=True, acks_late=True)
def bench_noop(due: float, sent: float) -> None:
    """Note the receipt time beside the due and send times (one RPUSH to the run's Redis)."""
    _redis().rpush(RECEIPTS_KEY, f"{time.time()} {due} {sent}")
