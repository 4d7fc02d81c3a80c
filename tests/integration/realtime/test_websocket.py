"""/ws/ end to end: real daphne processes, real Redis, real sockets."""

import asyncio
import re
import socket
import uuid

import aiohttp
import pytest
import redis
from django.conf import settings as django_settings
from django.contrib.auth.models import AbstractBaseUser
from django.db import connections as database_connections

from realtime.auth import realtime_token_create
from realtime.consumers import CLOSE_BAD_FRAME, CLOSE_BAD_TOKEN, CLOSE_NOT_FOUND
from realtime.services import realtime_publish
from realtime.topics import pubsub_channel, topic_parse
from tests.factories import UserFactory
from tests.integration.conftest import start_daphne
from tests.integration.realtime.clients import TIMEOUT, WsClient, latest_id, messages
from tests.integration.test_operations import TOKEN, scrape

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True), pytest.mark.database_agnostic]


def room() -> str:
    return f"room:{uuid.uuid4().hex[:12]}"


@pytest.fixture
def alice() -> AbstractBaseUser:
    return UserFactory.create(username="alice", password="pw-alice-123")


@pytest.fixture
def bob() -> AbstractBaseUser:
    return UserFactory.create(username="bob", password="pw-bob-123")


def token(user: AbstractBaseUser) -> str:
    return realtime_token_create(user_id=user.pk)


def test_a_message_published_once_reaches_clients_on_two_daphne_processes(
    daphne_url: str, second_daphne_url: str, alice: AbstractBaseUser, bob: AbstractBaseUser
) -> None:
    topic = room()

    async def scenario() -> tuple[list, list]:
        first = await WsClient.connect(daphne_url, token(alice))
        second = await WsClient.connect(second_daphne_url, token(bob))
        await first.subscribe(topic)
        await second.subscribe(topic)
        realtime_publish(topic=topic, event="video.liked", data={"likes": 1})
        got = [await first.frame()], [await second.frame()]
        await first.close()
        await second.close()
        return got

    on_first, on_second = asyncio.run(scenario())

    assert messages(on_first) == [(topic, 1, {"likes": 1})]
    assert messages(on_second) == [(topic, 1, {"likes": 1})]
    assert on_first[0]["event"] == "video.liked"


def test_resume_after_a_dropped_connection_replays_exactly_what_was_missed(
    daphne_url: str, alice: AbstractBaseUser
) -> None:
    topic = room()

    async def scenario() -> list:
        client = await WsClient.connect(daphne_url, token(alice))
        await client.subscribe(topic)
        realtime_publish(topic=topic, event="e", data={"n": 1})
        seen = [await client.frame()]
        await client.close()
        realtime_publish(topic=topic, event="e", data={"n": 2})
        realtime_publish(topic=topic, event="e", data={"n": 3})
        client = await WsClient.connect(daphne_url, token(alice))
        seen += await client.subscribe(topic, last_id=seen[-1]["id"])
        realtime_publish(topic=topic, event="e", data={"n": 4})
        seen.append(await client.frame())
        await client.close()
        return seen

    seen = asyncio.run(scenario())

    assert messages(seen) == [(topic, n, {"n": n}) for n in (1, 2, 3, 4)]
    assert [f["type"] for f in seen] == ["message", "message", "message", "subscribed", "message"]


def test_an_id_older_than_the_history_gets_resync_not_a_gap(
    daphne_url: str, alice: AbstractBaseUser, settings: object
) -> None:
    settings.REALTIME_HISTORY_MAX_LENGTH = 3  # type: ignore[attr-defined]
    topic = room()
    for n in range(1, 7):
        realtime_publish(topic=topic, event="e", data={"n": n})

    async def scenario() -> list:
        client = await WsClient.connect(daphne_url, token(alice))
        frames = await client.subscribe(topic, last_id=1)
        realtime_publish(topic=topic, event="e", data={"n": 7})
        frames.append(await client.frame())
        await client.close()
        return frames

    frames = asyncio.run(scenario())

    assert frames[0] == {"type": "resync", "topic": topic, "id": 6}
    assert frames[1] == {"type": "subscribed", "topic": topic, "id": 6}
    assert messages(frames[2:]) == [(topic, 7, {"n": 7})]


def test_another_users_private_topic_is_refused_and_ones_own_is_not(
    daphne_url: str, alice: AbstractBaseUser, bob: AbstractBaseUser
) -> None:
    before = latest_id(f"user:{alice.pk}")

    async def scenario() -> tuple[list, list, list]:
        client = await WsClient.connect(daphne_url, token(alice))
        refused = await client.subscribe(f"user:{bob.pk}")
        own = await client.subscribe(f"user:{alice.pk}")
        realtime_publish(topic=f"user:{alice.pk}", event="notification.created", data={"n": 1})
        own.append(await client.frame())
        await client.close()
        anonymous = await WsClient.connect(daphne_url)
        refused_anonymous = await anonymous.subscribe(room())
        await anonymous.close()
        return refused, own, refused_anonymous

    refused, own, refused_anonymous = asyncio.run(scenario())

    assert refused[0]["type"] == "error"
    assert refused[0]["code"] == "topic_refused"
    assert "another user's private topic" in refused[0]["reason"]
    assert own[0]["type"] == "subscribed"
    assert messages(own) == [(f"user:{alice.pk}", before + 1, {"n": 1})]
    assert refused_anonymous[0]["code"] == "topic_refused"


@pytest.mark.parametrize(
    "garbage",
    [
        "not json",
        "[1, 2]",
        '{"type": "dance"}',
        '{"type": "subscribe"}',
        '{"type": "subscribe", "topic": "room:a", "last_id": -1}',
    ],
)
def test_a_garbage_frame_closes_only_that_connection(
    daphne_url: str, alice: AbstractBaseUser, garbage: str
) -> None:
    topic = room()

    async def scenario() -> tuple[int | None, list]:
        bad = await WsClient.connect(daphne_url, token(alice))
        good = await WsClient.connect(daphne_url, token(alice))
        await bad.subscribe(topic)
        await good.subscribe(topic)
        await bad.send(garbage)
        code = await bad.close_code()
        realtime_publish(topic=topic, event="e", data={"still": "here"})
        frames = [await good.frame()]
        await bad.close()
        await good.close()
        return code, frames

    code, frames = asyncio.run(scenario())

    assert code == CLOSE_BAD_FRAME
    assert messages(frames) == [(topic, 1, {"still": "here"})]


def test_an_invalid_token_closes_with_4401(daphne_url: str) -> None:
    async def scenario() -> int | None:
        client = await WsClient.connect(daphne_url, "forged:token")
        code = await client.close_code()
        await client.close()
        return code

    assert asyncio.run(scenario()) == CLOSE_BAD_TOKEN


def test_an_invalid_topic_name_gets_an_error_frame_and_the_connection_stays(
    daphne_url: str, alice: AbstractBaseUser
) -> None:
    async def scenario() -> list:
        client = await WsClient.connect(daphne_url, token(alice))
        frames = await client.subscribe("room:no spaces")
        await client.send({"type": "ping"})
        frames.append(await client.frame())
        await client.close()
        return frames

    frames = asyncio.run(scenario())

    assert frames[0]["code"] == "invalid_topic"
    assert frames[1] == {"type": "pong"}


def test_the_last_client_leaving_a_topic_ends_the_processs_redis_subscription(
    daphne_url: str, alice: AbstractBaseUser
) -> None:
    topic = room()
    channel = pubsub_channel(topic_parse(topic))
    client = redis.Redis.from_url(django_settings.REALTIME_REDIS_URL)

    async def scenario() -> tuple[int, int]:
        first = await WsClient.connect(daphne_url, token(alice))
        second = await WsClient.connect(daphne_url, token(alice))
        await first.subscribe(topic)
        await second.subscribe(topic)
        # One Redis subscription for two local connections on the same topic.
        while_connected = dict(client.pubsub_numsub(channel))[channel.encode()]
        await first.close()
        await second.close()
        for _ in range(100):
            if dict(client.pubsub_numsub(channel))[channel.encode()] == 0:
                break
            await asyncio.sleep(0.1)
        return while_connected, dict(client.pubsub_numsub(channel))[channel.encode()]

    assert asyncio.run(scenario()) == (1, 0)


def test_metrics_count_each_daphne_process_connections_and_the_messages_published(
    alice: AbstractBaseUser,
) -> None:
    process, url = start_daphne("daphne-metrics")  # its own, so its counts are exactly ours
    label = f'process="{socket.gethostname()}:{process.process.pid}"'
    topic = room()

    def scraped() -> tuple[int | None, int]:
        try:
            text = scrape(f"Bearer {TOKEN}")[1]
        finally:
            # The scrape reads the database on a thread of the loop's pool, which nothing
            # else closes: PostgreSQL would refuse to drop the test database at the end.
            database_connections.close_all()
        mine = re.search(rf"^carillon_realtime_connections\{{{label}\}} (\S+)$", text, re.M)
        published = re.search(r"^carillon_realtime_published_total (\S+)$", text, re.M)
        assert published, text
        return (int(float(mine[1])) if mine else None), int(float(published[1]))

    async def until(connections: int) -> int:
        # A process writes its counters when connections come and go: poll briefly.
        for _ in range(100):
            now, published = await asyncio.to_thread(scraped)
            if now == connections:
                return published
            await asyncio.sleep(0.1)
        raise AssertionError(f"{label} never reported {connections} connections (last: {now})")

    async def scenario() -> tuple[int, int]:
        first = await WsClient.connect(url, token(alice))
        second = await WsClient.connect(url, token(alice))
        await first.subscribe(topic)
        before = await until(2)
        realtime_publish(topic=topic, event="video.liked", data={"likes": 1})
        await first.frame()
        await second.close()
        after = await until(1)
        await first.close()
        return before, after

    try:
        before, after = asyncio.run(scenario())
    finally:
        process.stop()
    # The counter is the whole Redis's: presence changes of earlier tests' connections
    # (an offline after its grace period) may land in the window too. That it counts each
    # message exactly once is test_publish.py's, on a database of its own.
    assert after >= before + 1


@pytest.mark.parametrize("path", ["/ws/nope/", "/ws", "/events/"])
def test_a_websocket_to_another_path_is_closed_with_4404_not_a_server_error(
    daphne_url: str, path: str
) -> None:
    async def scenario() -> int | None:
        async with aiohttp.ClientSession() as session:
            ws = await session.ws_connect(daphne_url.replace("http", "ws", 1) + path, origin=daphne_url)
            message = await asyncio.wait_for(ws.receive(), TIMEOUT)
            assert message.type == aiohttp.WSMsgType.CLOSE, message
            return ws.close_code

    assert asyncio.run(scenario()) == CLOSE_NOT_FOUND


def test_a_client_that_drops_before_any_message_resumes_from_the_subscribed_id(
    daphne_url: str, alice: AbstractBaseUser
) -> None:
    """`subscribed` says where a subscription from now starts: what a client stores."""
    topic = room()
    for n in (1, 2, 3):
        realtime_publish(topic=topic, event="e", data={"n": n})

    async def scenario() -> tuple[dict, list]:
        client = await WsClient.connect(daphne_url, token(alice))
        subscribed = (await client.subscribe(topic))[-1]
        await client.close()
        for n in (4, 5):
            realtime_publish(topic=topic, event="e", data={"n": n})
        client = await WsClient.connect(daphne_url, token(alice))
        frames = await client.subscribe(topic, last_id=subscribed["id"])
        await client.close()
        return subscribed, frames

    subscribed, frames = asyncio.run(scenario())

    assert subscribed == {"type": "subscribed", "topic": topic, "id": 3}
    assert messages(frames) == [(topic, 4, {"n": 4}), (topic, 5, {"n": 5})]
