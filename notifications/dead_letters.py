"""Move dead-lettered messages into FailedJob rows, losing and duplicating none.

A message is acknowledged only after its FailedJob is committed; a drain that dies in
between leaves the message in the queue, and the next drain finds the FailedJob already
recorded under the message's task id and only acknowledges it.
"""

import hashlib
import logging
from dataclasses import dataclass
from typing import Any

from kombu import Message

from config.celery import app as critical_app
from notifications.exceptions import DeadLettered
from notifications.queues import dead_letter_queues, topology_declare
from notifications.services.failed_jobs import failed_job_record

logger = logging.getLogger(__name__)


def _describe(message: Message, dead_letter_queue: str) -> dict[str, Any]:
    headers = message.headers or {}
    deaths = headers.get("x-death") or [{}]
    death = deaths[0]
    try:
        body = message.decode()
    except Exception:  # noqa: BLE001 - an undecodable body is kept as text
        body = message.body
    args = body[0] if isinstance(body, list | tuple) and body and isinstance(body[0], list) else []
    task_id = headers.get("id") or message.properties.get("message_id")
    if not task_id:
        task_id = "sha256:" + hashlib.sha256(repr(message.body).encode()).hexdigest()
    return {
        "task_name": headers.get("task", "unknown"),
        "task_id": str(task_id),
        "queue": str(death.get("queue", dead_letter_queue)),
        "args": list(args),
        "reason": str(death.get("reason", "unknown")),
        "count": int(death.get("count", 1) or 1),
    }


@dataclass(frozen=True)
class DrainResult:
    taken: int  # messages acknowledged off the dead-letter queues
    recorded: int  # of those, how many became new failed jobs (the rest were recorded before)

    def __str__(self) -> str:
        return (
            f"{self.taken} dead-lettered messages taken: {self.recorded} recorded as new failed jobs, "
            f"{self.taken - self.recorded} already recorded"
        )


def dead_letter_drain(*, limit: int = 1000) -> DrainResult:
    """Record up to `limit` dead-lettered messages per queue as FailedJobs, acknowledging each."""
    taken = recorded = 0
    with critical_app.connection_for_read() as connection:
        topology_declare(connection)
        amqp_channel = connection.channel()
        try:
            for queue in dead_letter_queues():
                bound = queue(amqp_channel)
                for _ in range(limit):
                    message = bound.get(no_ack=False, accept=["json"])
                    if message is None:
                        break
                    described = _describe(message, queue.name)
                    _, created = failed_job_record(
                        task_name=described["task_name"],
                        task_id=described["task_id"],
                        queue=described["queue"],
                        args=described["args"],
                        error=DeadLettered(
                            f"dead-lettered from {described['queue']}: {described['reason']}"
                        ),
                        traceback="",
                        attempts=described["count"],
                        source="dead_letter",
                    )
                    message.ack()
                    taken += 1
                    recorded += created
        finally:
            amqp_channel.close()
    result = DrainResult(taken=taken, recorded=recorded)
    if taken:
        logger.info("dead-letter drain: %s", result)
    return result
