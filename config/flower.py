"""Flower's configuration file (`celery flower --conf=config/flower.py`), executed by Flower.

Flower serves /metrics without authentication even when basic auth is on (its Metrics
handler lacks the `authenticated` decorator every other page has). We put it behind the
same check rather than expose queue and task names to anyone who can reach the port.
"""

from flower.views import monitor
from tornado import web

monitor.Metrics.get = web.authenticated(monitor.Metrics.get)  # type: ignore[method-assign]
