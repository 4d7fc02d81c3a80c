"""The process hub on its own, against the real Redis: what holds under the connections."""

import asyncio
import uuid
from typing import Any

import pytest
import redis.asyncio as aioredis
import redis.exceptions
from django.conf import settings

from realtime.hub import get_hub
from realtime.pubsub import PubSubLink
from realtime.services import arealtime_publish
from realtime.topics import Topic
from tests.processes import await_for, free_port
from tests.unit.realtime.conftest import RecordingSink

pytestmark = [pytest.mark.integration, pytest.mark.database_agnostic]




def fresh_topic() -> Topic:
    return Topic("room", f"hub-{uuid.uuid4().hex[:8]}")


@pytest.mark.parametrize("start", [None, 2], ids=["from now", "from the latest id"])
def test_a_subscriber_from_now_on_a_followed_topic_needs_no_history_read(start: int | None) -> None:
    """An SSE stream reads its start positions first and subscribes from exactly them."""
    topic = fresh_topic()

    async def scenario() -> list[tuple[str, object]]:
        hub = get_hub()
        early = RecordingSink()
        hub.subscribe(early, topic, None)
        await await_for(lambda: ("subscribed", 0) in early.seen(), "the early subscriber subscribed", 5)
        for number in (1, 2):
            await arealtime_publish(topic=str(topic), event="e", data={"n": number})
        await await_for(lambda: len(early.seen()) == 3, "three frames to the early subscriber", 5)
        # History reads now go to a Redis that is not there: only what the hub already
        # knows of the topic can answer the late subscriber.
        hub._history = aioredis.Redis.from_url(f"redis://127.0.0.1:{free_port()}/0")
        late = RecordingSink()
        hub.subscribe(late, topic, start)
        await arealtime_publish(topic=str(topic), event="e", data={"n": 3})
        await await_for(lambda: len(late.seen()) == 2, "two frames to the late subscriber", 5)
        return late.seen()

    assert asyncio.run(scenario()) == [("subscribed", 2), ("message", 3)]


def test_first_subscriptions_to_two_topics_at_once_both_hold() -> None:
    """redis-py's PubSub loses one of two concurrent first SUBSCRIBEs unless the hub
    sends them one at a time."""
    topics = [fresh_topic(), fresh_topic()]

    async def scenario() -> list[list[tuple[str, object]]]:
        hub = get_hub()  # a new event loop: a hub whose pub/sub connection is not open yet
        sinks = [RecordingSink(), RecordingSink()]
        for sink, topic in zip(sinks, topics, strict=True):
            hub.subscribe(sink, topic, None)
        await await_for(lambda: all(len(s.seen()) == 1 for s in sinks), "one frame to every sink", 5)
        for topic in topics:
            await arealtime_publish(topic=str(topic), event="e", data={"n": 1})
        await await_for(lambda: all(len(s.seen()) == 2 for s in sinks), "two frames to every sink", 5)
        return [s.seen() for s in sinks]

    assert asyncio.run(scenario()) == [[("subscribed", 0), ("message", 1)]] * 2


@pytest.mark.timeout(30)  # on failure the loop's shutdown waits for the reader forever
def test_the_pubsub_reader_ends_on_cancel_even_when_redis_py_turns_it_into_a_connection_error() -> None:
    # The reader retries what looks like a lost connection. A cancellation delivered inside
    # redis-py's read can come out as its ConnectionError: the reader must still end, or
    # asyncio.run (or the server's shutdown) waits for it forever.
    async def scenario() -> None:
        topic = fresh_topic()
        link = PubSubLink(settings.REALTIME_REDIS_URL, wanted=lambda _: True,
                          on_message=lambda *_: None, on_confirmed=lambda _: None)
        link.subscribe(topic)
        await await_for(lambda: link._pubsub.subscribed, "subscribed", 5)
        read = link._pubsub.get_message
        inside = asyncio.Event()

        async def get_message(**kwargs: Any) -> Any:
            inside.set()
            try:
                return await read(**kwargs)
            except asyncio.CancelledError as exc:
                raise redis.exceptions.ConnectionError("connection closed") from exc

        link._pubsub.get_message = get_message  # type: ignore[method-assign,assignment]
        inside.clear()
        await inside.wait()
        link._reader.cancel()
        await asyncio.wait({link._reader}, timeout=3)
        assert link._reader.cancelled()

    asyncio.run(scenario())
