"""RealtimeConsumer through Channels' WebsocketCommunicator (in process, real Redis)."""

import asyncio
import contextlib

import pytest
from channels.testing import WebsocketCommunicator
from django.contrib.auth import get_user_model

from realtime.auth import realtime_token_create
from realtime.consumers import CLOSE_BAD_FRAME, RealtimeConsumer
from realtime.hub import Hub, get_hub
from realtime.topics import Topic

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True), pytest.mark.database_agnostic]


def test_anonymous_is_refused_with_a_frame_and_garbage_closes_with_4400() -> None:
    async def scenario() -> tuple[dict, dict]:
        communicator = WebsocketCommunicator(RealtimeConsumer.as_asgi(), "/ws/")
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


def test_a_connection_cancelled_while_subscribing_leaves_nothing_in_the_hub() -> None:
    """daphne cancels an application still busy after its client left: no subscription,
    no presence and no writer task may outlive it."""
    user = get_user_model().objects.create_user("cancelled")
    token = realtime_token_create(user_id=user.pk)

    async def scenario() -> tuple[Hub, list[dict]]:
        inbox: asyncio.Queue[dict] = asyncio.Queue()
        sent: list[dict] = []

        async def send(message: dict) -> None:
            sent.append(message)

        scope = {"type": "websocket", "path": "/ws/", "query_string": f"token={token}".encode(),
                 "headers": [], "subprotocols": []}
        application = asyncio.create_task(RealtimeConsumer.as_asgi()(scope, inbox.get, send))
        await inbox.put({"type": "websocket.connect"})
        await inbox.put({"type": "websocket.receive", "text": '{"type": "subscribe", "topic": "room:cancel"}'})
        hub = get_hub()
        for _ in range(200):
            if hub.table.follows(Topic("room", "cancel")) and hub.housekeeping.presence.connections.get(user.pk):
                break
            await asyncio.sleep(0.02)
        application.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await application
        await asyncio.sleep(0)  # the cancelled writer task finishes
        return hub, sent

    hub, sent = asyncio.run(scenario())

    assert sent[0]["type"] == "websocket.accept"
    assert not hub.table.follows(Topic("room", "cancel"))
    assert user.pk not in hub.housekeeping.presence.connections
    assert len(hub.housekeeping.sinks) == 0
