"""Heartbeats on both transports keep idle connections visibly alive."""

import asyncio

import aiohttp
import pytest
from django.contrib.auth import get_user_model

from realtime.auth import realtime_token_create
from tests.integration.conftest import start_daphne
from tests.integration.realtime.clients import TIMEOUT, WsClient

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True), pytest.mark.database_agnostic]


def test_idle_websocket_and_event_stream_both_get_heartbeats() -> None:
    user = get_user_model().objects.create_user("dave")
    # Short heartbeats so the test does not wait the production 25 s.
    daphne, url = start_daphne("daphne-heartbeat", {"REALTIME_HEARTBEAT_SECONDS": "0.2"})

    async def scenario() -> tuple[dict, bytes]:
        ws = await WsClient.connect(url, realtime_token_create(user_id=user.pk))
        frame = await ws.frame(skip=())
        await ws.close()
        token = realtime_token_create(user_id=user.pk)
        async with aiohttp.ClientSession() as session:
            async with session.get(f"{url}/events/?topic=room:idle&token={token}") as response:
                comment = await asyncio.wait_for(
                    response.content.readuntil(b": heartbeat\n\n"), TIMEOUT
                )
        return frame, comment

    try:
        frame, comment = asyncio.run(scenario())
    finally:
        daphne.stop()

    assert frame == {"type": "heartbeat"}
    assert comment.endswith(b": heartbeat\n\n")
