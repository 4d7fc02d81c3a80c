"""Flower's thread that reads the workers' task events, replaced (config/flower.py).

Flower's own loop retries a lost broker connection after 2, 4, 8... seconds, doubling
without limit: after a RabbitMQ outage of ten minutes it would show no task events for up
to about as long again. This one waits at most EVENTS_RETRY_MAX_SECONDS.
"""

import logging
import time
from typing import Any

from celery.events import EventReceiver

logger = logging.getLogger(__name__)

EVENTS_RETRY_MAX_SECONDS = 5.0


def events_capture(flower_events: Any) -> None:
    """Read the workers' events into Flower's state (`flower_events`: Flower's Events
    thread), forever; while the broker is away, try again every few seconds."""
    while True:
        try:
            with flower_events.capp.connection() as connection:
                connection.ensure_connection(
                    errback=_events_retry, max_retries=None, interval_start=0,
                    interval_step=EVENTS_RETRY_MAX_SECONDS / 5, interval_max=EVENTS_RETRY_MAX_SECONDS,
                )
                logger.info("capturing the workers' task events")
                EventReceiver(connection, handlers={"*": flower_events.on_event}, app=flower_events.capp).capture(
                    limit=None, timeout=None, wakeup=True)
        except Exception as exc:  # noqa: BLE001 - a thread that ends would leave Flower without events
            logger.warning("task events lost (%s): capturing again", exc)
            time.sleep(min(1.0, EVENTS_RETRY_MAX_SECONDS))  # not a busy loop if capture fails at once


def _events_retry(exc: Exception, interval: float) -> None:
    logger.warning("task events: broker unreachable (%s), trying again in %.1f s", exc, interval)
