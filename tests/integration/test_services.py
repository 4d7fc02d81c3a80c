"""The real services are reachable through Django, both Celery apps and Channels."""

import platform
import uuid

import pytest
import requests
from asgiref.sync import async_to_sync
from channels_redis.pubsub import RedisPubSubChannelLayer
from django.conf import settings
from django.test import Client, override_settings

from config.background import app as background_app
from config.background import ping as background_ping
from config.celery import app as critical_app
from config.celery import ping as critical_ping

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


def test_readyz_reports_every_service_ready() -> None:
    response = Client().get("/readyz")

    assert response.status_code == 200, response.json()
    assert {name: check["ok"] for name, check in response.json()["checks"].items()} == {
        "database": True,
        "rabbitmq": True,
        "redis": True,
    }


@override_settings(REDIS_URL="redis://127.0.0.1:1/0")
def test_readyz_answers_503_naming_the_service_that_is_down() -> None:
    response = Client().get("/readyz")

    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "unavailable"
    assert body["checks"]["redis"]["ok"] is False
    assert "Connection" in body["checks"]["redis"]["error"]
    assert body["checks"]["rabbitmq"]["ok"] is True


def test_critical_app_round_trip_through_rabbitmq(critical_worker: object) -> None:
    assert critical_app.conf.broker_url.startswith("amqp://")

    answer = critical_ping.delay().get(timeout=30)

    assert answer["app"] == "critical"
    assert answer["python"] == platform.python_version()


def test_background_app_round_trip_through_redis(background_worker: object) -> None:
    assert background_app.conf.broker_url.startswith("redis://")

    answer = background_ping.delay().get(timeout=30)

    assert answer["app"] == "background"
    assert answer["python"] == platform.python_version()


def test_channel_layer_carries_a_group_message_between_two_processes_worth_of_layers() -> None:
    # Two layer instances stand for two frontend processes sharing Redis pub/sub.
    hosts = [settings.REDIS_URL]
    sender, receiver = RedisPubSubChannelLayer(hosts=hosts), RedisPubSubChannelLayer(hosts=hosts)
    group = f"test-{uuid.uuid4().hex}"

    async def exchange() -> dict[str, str]:
        channel = await receiver.new_channel()
        await receiver.group_add(group, channel)
        await sender.group_send(group, {"type": "notify", "text": "hello"})
        try:
            return await receiver.receive(channel)
        finally:
            await sender.flush()
            await receiver.flush()

    assert async_to_sync(exchange)() == {"type": "notify", "text": "hello"}


def test_daphne_serves_django_and_reports_ready(daphne_url: str) -> None:
    health = requests.get(f"{daphne_url}/healthz", timeout=5)
    ready = requests.get(f"{daphne_url}/readyz", timeout=10)
    schema = requests.get(f"{daphne_url}/api/schema/", timeout=10)

    # The standard library's platform module, not a project folder, answered in daphne.
    assert health.json() == {"status": "ok", "python": platform.python_version()}
    assert ready.status_code == 200, ready.text
    assert schema.status_code == 200
    assert "openapi" in schema.text
