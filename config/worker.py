"""The critical worker's consumer: Celery's, with two costs taken out of it.

- **Task events without publisher confirms.** Every publish on the critical app waits for
  RabbitMQ's confirm (CELERY_BROKER_TRANSPORT_OPTIONS), which is what a task or an
  envelope must have: it may not be lost. Task events are diagnostics for Flower,
  published by the worker's main process around each task; with confirms, that process
  stopped for a broker round trip per event, between handing one message to the pool and
  taking the next. Losing an event costs a line in Flower, so they go without.
- **Delayed delivery set up through the node it is connected to.** Quorum queues take
  countdowns and ETAs (retries) through exchanges Celery declares and binds at every
  connect, and Celery does it on *each* URL of a `;`-separated RABBITMQ_URL, retrying a
  dead one three times first: after a node was lost, a worker that had already failed
  over consumed nothing for ~20 s. The URLs name the nodes of one cluster, which share
  exchanges, queues and bindings: declaring them once, through the node the consumer is
  on, is enough. Should that fail, Celery's own loop runs.
- **Back on the broker within a second of its return.** Celery reconnects a consumer
  after 2, 4, 6, … up to 30 s between attempts, so a broker restarted in 5 s left the
  workers idle for up to 7 s more (and for up to 30 s after a longer outage). Attempts
  start half a second apart and never grow past 5 s: an attempt is one TCP connect.
- **A pool process that died is noticed within a second.** Celery replaces a dead pool
  process (and requeues the message it held) when its exit wakes the event loop, but
  that wake-up is sometimes missed, and only the pool's 5 s maintenance timer catches
  it. The timer runs every second here; a round costs a look at each pool process.
"""

import logging
from functools import partial
from typing import Any

from celery.concurrency.asynpool import AsynPool
from celery.concurrency.prefork import TaskPool
from celery.worker.consumer import Consumer
from celery.worker.consumer.delayed_delivery import DelayedDelivery
from kombu import Connection

logger = logging.getLogger(__name__)

# Seconds between a consumer's attempts to reach the broker again: the first, the growth
# per attempt and the most.
RECONNECT_FIRST_SECONDS = 0.5
RECONNECT_STEP_SECONDS = 0.5
RECONNECT_MAX_SECONDS = 5.0
POOL_MAINTENANCE_SECONDS = 1.0


class ClusterDelayedDelivery(DelayedDelivery):  # type: ignore[misc]  # celery is untyped
    def start(self, c: Consumer) -> None:
        try:
            self._validate_configuration(c.app)
            self._setup_delayed_delivery(c, c.connection.as_uri(include_password=True))
        except Exception as exc:  # noqa: BLE001 - Celery's loop over every node takes over
            logger.warning("delayed delivery through the current node failed (%s): trying every node", exc)
            super().start(c)


class CriticalConsumer(Consumer):  # type: ignore[misc]  # celery is untyped
    class Blueprint(Consumer.Blueprint):  # type: ignore[misc]
        default_steps = [
            "config.worker:ClusterDelayedDelivery" if step.endswith(":DelayedDelivery") else step
            for step in Consumer.Blueprint.default_steps
        ]

    # Celery's consumer opens a connection for writing only for its event dispatcher
    # (task events, worker heartbeats): the tasks themselves are consumed and acked on
    # the reading connection, and a task that publishes uses the app's producer pool.
    def connection_for_write(self, url: str | None = None, heartbeat: float | None = None) -> Any:
        return self.ensure_connected(
            self.app.connection_for_write(url=url, heartbeat=heartbeat, transport_options={"confirm_publish": False})
        )

    def ensure_connected(self, conn: Connection) -> Connection:
        return super().ensure_connected(reconnect_promptly(conn))


def reconnect_promptly(conn: Connection) -> Connection:
    """`conn`, whose attempts to reach the broker come at our cadence, not kombu's: Celery
    calls `ensure_connection` without intervals, so they are bound here."""
    conn.ensure_connection = partial(  # type: ignore[method-assign]
        conn.ensure_connection,
        interval_start=RECONNECT_FIRST_SECONDS,
        interval_step=RECONNECT_STEP_SECONDS,
        interval_max=RECONNECT_MAX_SECONDS,
    )
    return conn


class _CheckedAsynPool(AsynPool):  # type: ignore[misc]  # celery is untyped
    @property
    def timers(self) -> dict[Any, float]:
        return {self.maintain_pool: POOL_MAINTENANCE_SECONDS}


class CheckedTaskPool(TaskPool):  # type: ignore[misc]  # celery is untyped
    """The prefork pool, with its dead processes looked for every second."""

    Pool = _CheckedAsynPool
