"""The raw kombu consumer of `manage.py bench pipeline`. Free of Django imports: it runs
in a spawned process that does not set Django up."""

import time
from typing import Any

from kombu import Connection, Consumer, Exchange, Queue

RAW_QUEUE = Queue(
    "bench.raw",
    Exchange("carillon.tasks", type="topic", durable=True),
    routing_key="bench.raw",
    durable=True,
    queue_arguments={"x-queue-type": "quorum"},
)


def raw_consume(url: str, count: int, prefetch: int, done: Any) -> None:
    """Consume and ack `count` messages one by one; report the time of the last ack."""
    with Connection(url) as connection:
        received = 0

        def on_message(body: Any, message: Any) -> None:
            nonlocal received
            message.ack()
            received += 1

        with Consumer(connection, [RAW_QUEUE], callbacks=[on_message], prefetch_count=prefetch, accept=["json"]):
            done.put("ready")
            while received < count:
                connection.drain_events(timeout=60)
    done.put(time.perf_counter())
