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
"""

import logging
from typing import Any

from celery.worker.consumer import Consumer
from celery.worker.consumer.delayed_delivery import DelayedDelivery

logger = logging.getLogger(__name__)


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
