"""Flower's configuration file (`celery flower --conf=config/flower.py`), executed by Flower.

Flower serves /metrics without authentication even when basic auth is on (its Metrics
handler lacks the `authenticated` decorator every other page has). We put it behind the
same check rather than expose queue and task names to anyone who can reach the port.
"""

import os

from flower import events as flower_events
from flower.views import monitor
from tornado import web

from config.env import broker_urls
from config.flower_events import events_capture

monitor.Metrics.get = web.authenticated(monitor.Metrics.get)  # type: ignore[method-assign]
# Flower's own capture of the workers' task events waits longer after every failure,
# without limit (config/flower_events.py). Tornado executes this file and takes each name
# defined here that is also one of its options (an `import logging` here made Flower
# exit): hence the capture in a module of its own.
flower_events.Events.run = events_capture  # type: ignore[method-assign]

# Flower's broker tab reads RabbitMQ's management API, from one URL: the first node of
# RABBITMQ_MANAGEMENT_URL, which may name several (";"-separated, as /metrics reads it).
_management_urls = broker_urls(os.environ.get("RABBITMQ_MANAGEMENT_URL", ""))
if _management_urls:
    broker_api = _management_urls[0]
