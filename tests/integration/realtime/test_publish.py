"""Publishing under a burst: more concurrent publishes than Redis connections in the pool."""

import asyncio
import uuid

import pytest

from realtime.services import POOL_CONNECTIONS, arealtime_publish

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
