"""The chat ack receiver in front of Django (rooms/api/receiver.py), driven through the
ASGI application daphne serves: what it answers, and what it hands to a shard owner on
the real RabbitMQ."""

import asyncio
import json
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from channels.testing import HttpCommunicator
from django.test import override_settings
from kombu import Consumer

from config.asgi import application
from config.celery import app as critical_app
from rooms.shards import shard_queue
from sandbox.chat import chat_signed_headers

pytestmark = [pytest.mark.django_db(transaction=True)]

SECRET = "sandbox-chat-secret"
SHARD, ROOM = 7, 42


@pytest.fixture
def shard_inputs() -> Iterator[Callable[[], list[dict[str, Any]]]]:
    """Read what reached shard 7's queue since the test began (emptied first)."""
    queue = shard_queue(SHARD)
    with critical_app.connection_for_write() as connection:
        queue(connection.default_channel).declare()
        queue(connection.default_channel).purge()

        def read() -> list[dict[str, Any]]:
            received: list[dict[str, Any]] = []

            def take(body: dict[str, Any], message: Any) -> None:
                received.append(body)
                message.ack()

            with Consumer(connection, queues=[queue], accept=["json"], callbacks=[take]):
                while True:
                    try:
                        connection.drain_events(timeout=0.5)
                    except TimeoutError:
                        return received

        yield read


def post(body: bytes, *, secret: str = SECRET, query: str = f"shard={SHARD}&room={ROOM}") -> tuple[int, Any]:
    headers = [(b"content-type", b"application/json"),
               *((name.lower().encode(), value.encode()) for name, value in chat_signed_headers(secret, body).items())]

    async def request() -> dict[str, Any]:
        communicator = HttpCommunicator(application, "POST", f"/api/webhooks/chat/?{query}", body=body,
                                        headers=headers)
        return await communicator.get_response()

    response = asyncio.run(request())
    return response["status"], json.loads(response["body"])


def ack(key: str) -> bytes:
    return json.dumps({"type": "message.delivered", "id": "chm_9", "idempotency_key": key}).encode()


def test_a_signed_ack_is_handed_to_the_shard_named_in_its_callback_url(
    shard_inputs: Callable[[], list[dict[str, Any]]]
) -> None:
    key = str(uuid.uuid4())

    assert post(ack(key)) == (202, {"status": "accepted", "message": None})

    assert shard_inputs() == [{"kind": "ack", "shard": SHARD, "room": ROOM, "key": key, "provider_message_id": "chm_9"}]


def test_forged_oversized_and_malformed_acks_are_refused_and_reach_no_owner(
    shard_inputs: Callable[[], list[dict[str, Any]]]
) -> None:
    key = str(uuid.uuid4())
    status, answer = post(ack(key), secret="guessed")
    assert (status, answer["error"]) == (403, "invalid_signature")
    assert post(b"not json")[1]["error"] == "invalid_request"
    assert post(json.dumps({"type": "message.delivered"}).encode())[0] == 400
    with override_settings(DATA_UPLOAD_MAX_MEMORY_SIZE=100):
        status, answer = post(ack(key) + b" " * 200)
    assert (status, answer["error"]) == (413, "payload_too_large")
    assert post(json.dumps({"type": "message.read"}).encode()) == (200, {"status": "ignored",
                                                                         "reason": "not a delivery event"})

    assert shard_inputs() == []
