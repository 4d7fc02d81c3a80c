"""The raw baselines' Celery tasks: `bench pipeline`'s no-op that only notes when it ran,
and `bench ordered`'s direct sends to the chat platform with no room state. Bench
workers load them with `--include benchmarks.baseline_tasks`; Carillon's own workers
never do (autodiscovery looks for `tasks` modules only)."""

import time
from functools import cache
from typing import Any

import redis
from django.conf import settings

from config.celery import app
from rooms.providers import chat_send

RECEIPTS_KEY = "bench:celery:receipts"


@cache
def _redis() -> redis.Redis:
    return redis.Redis.from_url(settings.REALTIME_REDIS_URL)


@app.task(name="carillon.bench_noop", ignore_result=True, acks_late=True)
def bench_noop(due: float, sent: float) -> None:
    """Note the receipt time beside the due and send times (one RPUSH to the run's Redis)."""
    _redis().rpush(RECEIPTS_KEY, f"{time.time()} {due} {sent}")


# On the default queue, which the bench's worker consumes.
@app.task(name="carillon.bench_send_direct", shared=False)
def bench_room_send_direct(recipient: str, messages: list[list[Any]], pause_ms: int) -> None:
    """The baselines of `manage.py bench ordered`: call the platform with no room state.

    `messages` is a list of [sequence, idempotency key, body]. One message per task is the
    unordered baseline (send at once); a room's messages in one task with `pause_ms` after
    each is the naive fix (a fixed delay after every message), which holds its
    worker for the whole pause.
    """
    for index, (sequence, key, body) in enumerate(messages):
        if index and pause_ms:
            time.sleep(pause_ms / 1000)
        chat_send(room=recipient, body=body, idempotency_key=key, sequence=sequence, callback_url="")
