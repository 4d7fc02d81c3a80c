"""The critical worker's consumer: task events without publisher confirms.

Every publish on the critical app waits for RabbitMQ's confirm (CELERY_BROKER_TRANSPORT_OPTIONS),
which is what a task or an event must have: it may not be lost. Task events are another
matter: diagnostics for Flower, published by the worker's main process around each task.
With confirms, that process stopped for a broker round trip per event, between handing
one message to the pool and taking the next: ~15 % of a delivery worker's CPU and a wait
per task. Losing an event costs a line in Flower, so they go without.
"""

from typing import Any

from celery.worker.consumer import Consumer


class EventsUnconfirmedConsumer(Consumer):  # type: ignore[misc]  # celery is untyped
    # Celery's consumer opens a connection for writing only for its event dispatcher
    # (task events, worker heartbeats): the tasks themselves are consumed and acked on
    # the reading connection, and a task that publishes uses the app's producer pool.
    def connection_for_write(self, url: str | None = None, heartbeat: float | None = None) -> Any:
        return self.ensure_connected(
            self.app.connection_for_write(url=url, heartbeat=heartbeat, transport_options={"confirm_publish": False})
        )
