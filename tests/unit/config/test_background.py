"""The two Celery apps keep to their own broker: tried for real, each wrong send raises
before anything reaches a broker."""

import pytest
from celery.exceptions import QueueNotFound

from config import background, celery
from config.background import app as background_app
from config.celery import app as critical_app
from config.task_routing import WrongAppError
from notifications.channels import Channel, Lane
from notifications.queues import channel_queue_name, chunk_task_name, delivery_task_name


def test_each_app_has_its_own_broker() -> None:
    assert background_app.conf.broker_url.startswith("redis://")
    assert critical_app.conf.broker_url.startswith("amqp://")


def test_every_background_task_is_named_and_routed_for_redis() -> None:
    background_app.loader.import_default_modules()
    names = [name for name in background_app.tasks if not name.startswith("celery.")]

    assert {"background.digests_send_due", "background.cleanup", "background.drain_dead_letters"} <= set(names)
    assert [name for name in names if not name.startswith("background.")] == []
    for name in names:
        route = background_app.amqp.router.route({}, name)
        assert route["queue"].name == "background"


def test_each_task_is_registered_on_its_own_app_only() -> None:
    # Celery's @app.task shares a task with every app by default (shared=True): a
    # critical worker would then also know, and run, background tasks.
    background_app.loader.import_default_modules()
    critical_app.loader.import_default_modules()
    critical_names = {name for name in critical_app.tasks if not name.startswith("celery.")}
    background_names = {name for name in background_app.tasks if not name.startswith("celery.")}

    assert "notifications.email.deliver" in critical_names and "background.cleanup" in background_names
    assert critical_names & background_names == set()


def test_background_app_refuses_a_critical_task_by_name() -> None:
    with pytest.raises(WrongAppError, match="not a background task"):
        background_app.send_task("notifications.email.deliver", args=["event-id", "transactional_email"])


@pytest.mark.parametrize("channel", ["email", "sms"])
def test_background_task_cannot_be_sent_to_a_rabbitmq_queue(channel: str) -> None:
    with pytest.raises(QueueNotFound, match=channel_queue_name(channel)):
        background.ping.apply_async(queue=channel_queue_name(channel))


def test_critical_app_refuses_a_background_task_by_name() -> None:
    with pytest.raises(WrongAppError, match="is a background task"):
        critical_app.send_task("background.cleanup")


def test_critical_task_cannot_be_sent_to_the_redis_queue() -> None:
    with pytest.raises(QueueNotFound, match="background"):
        celery.ping.apply_async(queue="background")


def test_each_channel_task_goes_to_its_lanes_queue_unless_the_caller_names_one() -> None:
    route = critical_app.amqp.router.route
    for channel in Channel:
        delivery, chunk = critical_app.tasks[delivery_task_name(channel)], critical_app.tasks[chunk_task_name(channel)]
        assert route({}, delivery.name, task_type=delivery)["queue"].name == channel_queue_name(channel)
        assert route({}, chunk.name, task_type=chunk)["queue"].name == channel_queue_name(channel, Lane.BULK)
        named = route({"queue": "carillon.default"}, delivery.name, task_type=delivery)
        assert named["queue"].name == "carillon.default"


def test_no_task_sets_the_routing_attributes_celery_deprecates() -> None:
    # Celery 5.7 warns at binding, and 6.0 drops them: routes say where a task goes.
    deprecated = {"queue", "exchange", "exchange_type", "routing_key", "delivery_mode", "priority"}

    ours = [(name, task) for app in (critical_app, background_app) for name, task in app.tasks.items()
            if not name.startswith("celery.")]  # Celery's own builtins are Celery's business

    assert ours
    for name, task in ours:
        assert {attr: getattr(type(task), attr) for attr in deprecated if type(task).__dict__.get(attr) is not None} == {}, name
