"""A critical worker keeps its database connection between tasks, as a web process keeps
it between requests (CONN_MAX_AGE), and still drops one that is too old or broken."""

import time
from types import SimpleNamespace
from unittest import mock

import pytest
from celery.concurrency import get_implementation
from celery.fixups.django import DjangoWorkerFixup
from celery.signals import task_postrun, task_prerun
from celery.worker.consumer.delayed_delivery import DelayedDelivery
from django.db import connection
from kombu import Connection
from kombu.exceptions import OperationalError

from config.background import app as background_app
from config.celery import app as critical_app
from config.celery import ping
from config.worker import (
    POOL_MAINTENANCE_SECONDS,
    RECONNECT_MAX_SECONDS,
    ClusterDelayedDelivery,
    reconnect_promptly,
)
from core.processes import free_port

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


def test_delayed_delivery_is_set_up_once_through_the_node_the_worker_is_on() -> None:
    # RABBITMQ_URL names every node of one cluster, the first of them dead: the worker is
    # connected to the second, and only that one is asked (they share their exchanges).
    consumer = SimpleNamespace(app=critical_app, connection=Connection("amqp://guest:guest@10.0.0.2:5672//"))
    step = ClusterDelayedDelivery.__new__(ClusterDelayedDelivery)
    asked: list[str] = []
    with mock.patch.object(ClusterDelayedDelivery, "_setup_delayed_delivery",
                           lambda self, c, url: asked.append(url)):
        step.start(consumer)

    assert asked == ["amqp://guest:guest@10.0.0.2:5672//"]


def test_delayed_delivery_falls_back_to_every_node_when_the_current_one_fails() -> None:
    consumer = SimpleNamespace(app=critical_app, connection=Connection("amqp://guest:guest@10.0.0.2:5672//"))
    step = ClusterDelayedDelivery.__new__(ClusterDelayedDelivery)
    with (
        mock.patch.object(ClusterDelayedDelivery, "_setup_delayed_delivery", side_effect=OSError("refused")),
        mock.patch.object(DelayedDelivery, "start") as every_node,
    ):
        step.start(consumer)

    every_node.assert_called_once_with(consumer)


def test_a_consumer_tries_the_broker_again_within_a_second_and_never_waits_past_the_most() -> None:
    waits: list[float] = []
    conn = reconnect_promptly(Connection(f"amqp://guest:guest@127.0.0.1:{free_port()}//", connect_timeout=1))

    # As Celery's consumer calls it: an errback, a retry count, no intervals.
    with pytest.raises(OperationalError):
        conn.ensure_connection(lambda exc, interval: waits.append(interval), 3)

    assert waits[0] <= 1 and max(waits) <= RECONNECT_MAX_SECONDS
    assert waits == sorted(waits)  # growing, not a retry storm
    assert critical_app.conf.broker_connection_max_retries is None  # a critical worker never gives up


def test_a_background_worker_waits_for_its_redis_however_long_it_is_away() -> None:
    # Celery's default gives up after 100 attempts (about 47 minutes of an outage) and the
    # worker exits; under platform/run that stops every other process with it.
    assert background_app.conf.broker_connection_max_retries is None


def test_a_critical_workers_pool_looks_for_dead_processes_every_second() -> None:
    # `celery worker` without --pool takes the app's worker_pool: ours, whose maintenance
    # timer (replace dead processes, give back what they held) runs every second, not 5.
    pool_class = get_implementation(critical_app.conf.worker_pool)
    maintain = object()

    timers = pool_class.Pool.timers.fget(SimpleNamespace(maintain_pool=maintain))

    assert timers == {maintain: POOL_MAINTENANCE_SECONDS} and POOL_MAINTENANCE_SECONDS <= 1
