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
