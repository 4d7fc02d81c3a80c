"""Redis clients come from one place: straight to REDIS_URL, or through the Sentinels."""

import asyncio

import redis
import redis.asyncio as aioredis
from django.test import override_settings
from redis.sentinel import SentinelConnectionPool

from core.redis import redis_async_client, redis_client

SENTINELS = [("127.0.0.1", 26379), ("127.0.0.1", 26380)]


def test_one_redis_is_the_server_the_url_names() -> None:
    client = redis_client("redis://:secret@cache.example.com:6390/3")

    assert client.connection_pool.connection_kwargs["host"] == "cache.example.com"
    assert client.connection_pool.connection_kwargs["db"] == 3


def test_a_bounded_pool_waits_for_a_free_connection_instead_of_failing() -> None:
    client = redis_client("redis://cache.example.com:6390/0", max_connections=7, pool_timeout=3)

    assert isinstance(client.connection_pool, redis.BlockingConnectionPool)
    assert client.connection_pool.max_connections == 7


@override_settings(REDIS_SENTINELS=SENTINELS, REDIS_SENTINEL_MASTER="carillon")
def test_with_sentinels_the_primary_is_asked_for_by_name() -> None:
    client = redis_client("redis://:secret@ignored:6379/3", max_connections=7, pool_timeout=3)
    pool = client.connection_pool

    assert isinstance(pool, SentinelConnectionPool)
    assert isinstance(pool, redis.BlockingConnectionPool)  # still waits when full
    assert pool.service_name == "carillon"
    assert pool.max_connections == 7
    assert (pool.connection_kwargs["db"], pool.connection_kwargs["password"]) == (3, "secret")
    assert [(s.connection_pool.connection_kwargs["host"], s.connection_pool.connection_kwargs["port"])
            for s in pool.sentinel_manager.sentinels] == SENTINELS


@override_settings(REDIS_SENTINELS=SENTINELS, REDIS_SENTINEL_MASTER="carillon")
def test_asyncio_clients_go_through_the_sentinels_too() -> None:
    async def build() -> aioredis.Redis:
        return redis_async_client("redis://ignored:6379/5", max_connections=4, pool_timeout=1)

    pool = asyncio.run(build()).connection_pool

    assert isinstance(pool, aioredis.BlockingConnectionPool)
    assert getattr(pool, "service_name", None) == "carillon"
    assert pool.connection_kwargs["db"] == 5
