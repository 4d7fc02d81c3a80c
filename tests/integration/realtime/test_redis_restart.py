"""Redis restarted under live connections: clients resume, nothing in the window is lost.

The test runs a Redis of its own (same configuration as platform/lib.sh's) and a daphne
pointed at it, so restarting it leaves every other test's Redis alone.
"""

import asyncio
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from django.contrib.auth import get_user_model

from realtime.auth import realtime_token_create
from realtime.history import history_append_many
from realtime.services import message_encode
from realtime.topics import topic_parse
from tests.integration.conftest import start_daphne
from tests.integration.realtime.clients import WsClient, messages
from tests.processes import ROOT, free_port

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


class OwnRedis:
    def __init__(self, directory: Path) -> None:
        self.port = free_port()
        self.directory = directory
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        subprocess.run(
            [
                "redis-server",
                str(ROOT / "platform" / "redis" / "redis.conf"),
                "--port",
                str(self.port),
                "--dir",
                str(self.directory),
                "--daemonize",
                "yes",
                "--pidfile",
                str(self.directory / "redis.pid"),
                "--logfile",
                str(self.directory / "redis.log"),
            ],
            check=True,
        )
        client = redis.Redis.from_url(self.url)
        for _ in range(100):
            try:
                client.ping()
                return
            except redis.ConnectionError:
                subprocess.run(["sleep", "0.1"], check=True)
        raise RuntimeError(f"Redis on {self.port} did not start")

    def stop(self) -> None:
        subprocess.run(
            ["redis-cli", "-p", str(self.port), "shutdown"], check=False, capture_output=True
        )


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
