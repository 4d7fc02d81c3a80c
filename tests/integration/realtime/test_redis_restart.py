"""Redis restarted under live connections: clients resume, nothing in the window is lost.

The test runs a Redis of its own (same configuration as platform/lib.sh's) and a daphne
pointed at it, so restarting it leaves every other test's Redis alone.
"""

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import redis.asyncio as aioredis
import time_machine
from django.contrib.auth import get_user_model

from realtime.auth import realtime_token_create
from realtime.frames import Control
from realtime.history import ahistory_since, history_append_many
from realtime.services import message_encode
from realtime.subscriptions import SubscriptionTable
from realtime.topics import sequence_key, topic_parse
from tests.integration.conftest import start_daphne
from tests.integration.realtime.clients import WsClient, messages
from tests.processes import OwnRedis, wait_for
from tests.unit.realtime.conftest import RecordingSink

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True), pytest.mark.database_agnostic]


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[OwnRedis]:
    server = OwnRedis(tmp_path)
    server.start()
    yield server
    server.stop()


def test_clients_resume_after_redis_restarts_under_them(own_redis: OwnRedis) -> None:
    user = get_user_model().objects.create_user("carol")
    daphne, url = start_daphne("daphne-own-redis", {"REALTIME_REDIS_URL": own_redis.url})
    topic = "room:restart"

    def publish(n: int) -> None:
        body = message_encode(topic=topic_parse(topic), event="e", data={"n": n})
        history_append_many(redis.Redis.from_url(own_redis.url), [(topic_parse(topic), body)])

    async def scenario() -> list:
        client = await WsClient.connect(url, realtime_token_create(user_id=user.pk))
        await client.subscribe(topic)
        publish(1)
        seen = [await client.frame()]
        own_redis.stop()
        own_redis.start()
        # Published while daphne may still be reconnecting: pub/sub alone would lose it.
        publish(2)
        seen.append(await client.frame())
        publish(3)
        seen.append(await client.frame())
        await client.close()
        return seen

    try:
        seen = asyncio.run(scenario())
    finally:
        daphne.stop()

    assert messages(seen) == [(topic, n, {"n": n}) for n in (1, 2, 3)]


def test_a_failover_that_lost_writes_never_hands_their_ids_out_again(tmp_path: Path) -> None:
    # What Sentinel does when a primary dies: its replica is promoted, without the writes
    # that had not reached it yet. Those ids went to clients; new messages on the new
    # primary must not reuse them, or a client holding one would skip a message silently.
    (tmp_path / "primary").mkdir()
    (tmp_path / "replica").mkdir()
    primary = OwnRedis(tmp_path / "primary")
    primary.start()
    replica = OwnRedis(tmp_path / "replica", "--replicaof", "127.0.0.1", str(primary.port))
    replica.start()
    try:
        old, new = redis.Redis.from_url(primary.url), redis.Redis.from_url(replica.url)
        topic = topic_parse("room:failover")

        def publish(client: redis.Redis, n: int) -> int:
            return history_append_many(client, [(topic, message_encode(topic=topic, event="e", data={"n": n}))])[0]

        assert [publish(old, n) for n in range(3)] == [1, 2, 3]
        wait_for(lambda: new.get(sequence_key(topic)) == b"3", "the replica has the first three")
        new.replicaof("NO", "ONE")  # cut off from the primary, which takes two more
        lost = [publish(old, n) for n in range(3, 5)]  # reached clients, never the replica
        # Sentinel promotes it once the primary was unreachable for down-after-milliseconds.
        with time_machine.travel(time.time() + 6):
            after = publish(new, 5)

            assert after > max(lost)
            # A client that got the lost ones and resumes on the new primary is told
            # resync, not handed the new message as if nothing were missing.
            table = SubscriptionTable(pending_limit=10)
            subscription, _ = table.follow(RecordingSink(), topic, max(lost))
            read = asyncio.run(ahistory_since(aioredis.Redis.from_url(replica.url), topic=topic, last_id=max(lost)))
            [frame] = table.missed(subscription, read)
            assert isinstance(frame, Control) and frame.type == "resync", frame
            # The next message follows on from the new one: ids go on one by one.
            assert publish(new, 6) == after + 1
    finally:
        replica.stop()
        primary.stop()
