"""RealtimeConsumer through Channels' WebsocketCommunicator (in process, real Redis)."""

import asyncio

import pytest
from channels.testing import WebsocketCommunicator
from django.contrib.auth.models import AnonymousUser

from realtime.consumers import CLOSE_BAD_FRAME, RealtimeConsumer

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


def test_anonymous_is_refused_with_a_frame_and_garbage_closes_with_4400() -> None:
    async def scenario() -> tuple[dict, dict]:
        communicator = WebsocketCommunicator(RealtimeConsumer.as_asgi(), "/ws/")
        communicator.scope["user"] = AnonymousUser()
        connected, _ = await communicator.connect()
        assert connected
        await communicator.send_json_to({"type": "subscribe", "topic": "room:lobby"})
        refused = await communicator.receive_json_from(timeout=10)
        await communicator.send_to(text_data="{oops")
        closed = await communicator.receive_output(timeout=10)
        await communicator.wait()
        return refused, closed

    refused, closed = asyncio.run(scenario())

    assert refused["type"] == "error"
    assert refused["code"] == "topic_refused"
    assert closed["type"] == "websocket.close"
    assert closed["code"] == CLOSE_BAD_FRAME
