"""A critical worker keeps its database connection between tasks, as a web process keeps
it between requests (CONN_MAX_AGE), and still drops one that is too old or broken."""

import time

import pytest
from celery.fixups.django import DjangoWorkerFixup
from celery.signals import task_postrun, task_prerun
from django.db import connection

from config.celery import app as critical_app
from config.celery import ping

pytestmark = pytest.mark.django_db(transaction=True)


def run_task_signals() -> None:
    """What a worker does around every task: its Django fixup's hooks, then the signals."""
    fixup = DjangoWorkerFixup(critical_app)
    fixup.on_task_prerun(sender=ping)
    task_prerun.send(sender=ping, task_id="t", task=ping, args=(), kwargs={})
    fixup.on_task_postrun(sender=ping)
    task_postrun.send(sender=ping, task_id="t", task=ping, args=(), kwargs={}, retval=None, state="SUCCESS")


def test_a_worker_reuses_its_database_connection_for_the_next_task() -> None:
    connection.ensure_connection()
    before = connection.connection

    run_task_signals()

    assert connection.connection is before


def test_a_worker_closes_a_connection_older_than_conn_max_age() -> None:
    connection.ensure_connection()
    connection.close_at = time.monotonic() - 1

    run_task_signals()

    assert connection.connection is None


def test_task_events_go_without_publisher_confirms_and_tasks_keep_them() -> None:
    # A worker's task events (Flower's view) leave on the connection its consumer opens for
    # writing; tasks are published through the app's pool, which must keep confirms.
    consumer_class = critical_app.subclass_with_self(critical_app.conf.worker_consumer)
    consumer = consumer_class.__new__(consumer_class)
    consumer.ensure_connected = lambda conn: conn  # no broker needed to read the options

    events = consumer.connection_for_write()
    with critical_app.connection_for_write() as tasks:
        assert events.transport_options["confirm_publish"] is False
        assert tasks.transport_options["confirm_publish"] is True
    events.release()
