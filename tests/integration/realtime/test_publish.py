"""Publishing under a burst: more concurrent publishes than Redis connections in the pool."""

import asyncio
import json
import uuid

import pytest
import redis
from django.conf import settings
from django.test import override_settings

from realtime.exceptions import InvalidMessage, MessageTooLarge
from realtime.history import history_append_many
from realtime.services import (
    POOL_CONNECTIONS,
    arealtime_publish,
    realtime_publish,
    realtime_publish_many,
)
from realtime.topics import STATS_PUBLISHED_KEY, topic_parse
from tests.integration.realtime.clients import latest_id

pytestmark = [pytest.mark.integration, pytest.mark.database_agnostic]


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


def test_many_messages_go_in_one_round_trip_each_with_its_topics_next_id() -> None:
    first, second = (f"user:{n}{uuid.uuid4().int % 10**9}" for n in (1, 2))
    messages = [(first, "notification.created", {"n": 1}), (second, "notification.created", {"n": 2}),
                (first, "notification.created", {"n": 3})]

    assert realtime_publish_many(messages) == [1, 1, 2]
    assert (latest_id(first), latest_id(second)) == (2, 1)


def test_one_bad_message_publishes_none_of_its_batch() -> None:
    topic = f"user:{uuid.uuid4().int % 10**9}"

    with pytest.raises(InvalidMessage):
        realtime_publish_many([(topic, "notification.created", {"n": 1}), (topic, "bad", "not an object")])

    assert latest_id(topic) == 0


def test_a_redis_that_forgot_the_script_gets_it_again_and_each_message_once() -> None:
    topic = f"user:{uuid.uuid4().int % 10**9}"
    redis.Redis.from_url(settings.REALTIME_REDIS_URL).script_flush()  # as after a restart

    assert realtime_publish_many([(topic, "e", {"n": 1}), (topic, "e", {"n": 2})]) == [1, 2]
    assert latest_id(topic) == 2


def test_the_published_counter_counts_each_message_once() -> None:
    # On a Redis database of its own (8: the suite's realtime data lives in 0, the beat
    # tests take 9-15), where nothing else publishes: the exact count.
    client = redis.Redis.from_url(settings.REALTIME_REDIS_URL, db=8)
    client.flushdb()
    try:
        names = [f"user:{n}{uuid.uuid4().int % 10**9}" for n in (1, 2)]
        topics = [topic_parse(name) for name in names]
        bodies = [json.dumps({"topic": name, "event": "e", "data": {"n": n}}) for n, name in enumerate(names * 2)]

        history_append_many(client, list(zip(topics * 2, bodies, strict=True)))

        assert int(client.get(STATS_PUBLISHED_KEY) or 0) == 4
    finally:
        client.flushdb()
