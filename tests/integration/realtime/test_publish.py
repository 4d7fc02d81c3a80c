"""Publishing under a burst: more concurrent publishes than Redis connections in the pool."""

import asyncio
import uuid

import pytest
from django.test import override_settings

from realtime.exceptions import InvalidMessage, MessageTooLarge
from realtime.services import POOL_CONNECTIONS, arealtime_publish, realtime_publish
from tests.integration.realtime.clients import latest_id

pytestmark = pytest.mark.integration


def test_a_burst_of_publishes_beyond_the_pool_size_waits_for_connections_and_loses_none() -> None:
    topic = f"room:{uuid.uuid4().hex[:12]}"
    burst = 5 * POOL_CONNECTIONS

    async def publish_all() -> list[int]:
        return await asyncio.gather(
            *(arealtime_publish(topic=topic, event="video.liked", data={"n": n}) for n in range(burst))
        )

    ids = asyncio.run(publish_all())

    assert sorted(ids) == list(range(1, burst + 1))  # every one published, ids without holes


@override_settings(REALTIME_MAX_MESSAGE_BYTES=1024)
def test_every_publisher_is_held_to_the_size_limit_and_an_object_of_data() -> None:
    """In-app pushes and the /live/ like call the service, not the API: it is the bound."""
    topic = f"room:{uuid.uuid4().hex[:12]}"

    with pytest.raises(MessageTooLarge, match="over the limit of 1024"):
        realtime_publish(topic=topic, event="e", data={"blob": "x" * 2000})
    with pytest.raises(MessageTooLarge):
        asyncio.run(arealtime_publish(topic=topic, event="e", data={"blob": "x" * 2000}))
    for data in ("str", [1], 3, None, {"nan": float("nan")}, {"when": object()}):
        with pytest.raises(InvalidMessage):
            realtime_publish(topic=topic, event="e", data=data)

    assert latest_id(topic) == 0
