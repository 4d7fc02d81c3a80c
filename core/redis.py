"""The one place Redis clients are built from settings.

With one Redis, a client connects to the server its URL names. With Redis Sentinel
(REDIS_SENTINELS names the Sentinels), the URL's host and port are not used: the client
asks the Sentinels which server is the primary of REDIS_SENTINEL_MASTER and connects
there, and after a failover its connections fail and reconnect to the new primary (the
Sentinels tell it which). The URL still gives the database number and the password.

Every part that talks to Redis (realtime hub and history, presence, rate limits, send
rates, the beat lock, health checks) builds its client here, so the two layouts differ in
settings alone. The background Celery app reaches Redis through kombu, whose broker URL
the settings translate (config/env.py, celery_redis_url).
"""

from dataclasses import dataclass
from typing import Any

import redis
import redis.asyncio as aioredis
from django.conf import settings
from redis.asyncio.sentinel import Sentinel as AsyncSentinel
from redis.asyncio.sentinel import SentinelConnectionPool as AsyncSentinelConnectionPool
from redis.connection import parse_url
from redis.sentinel import Sentinel, SentinelConnectionPool

# A Sentinel that does not answer in this long is passed over for the next.
SENTINEL_TIMEOUT_SECONDS = 0.5


class _SentinelBlockingConnectionPool(SentinelConnectionPool, redis.BlockingConnectionPool):
    """Sentinel's pool (connections to whichever server is primary) that waits for a free
    connection when full, as BlockingConnectionPool does, instead of raising."""


class _AsyncSentinelBlockingConnectionPool(AsyncSentinelConnectionPool, aioredis.BlockingConnectionPool):
    """The same for redis.asyncio."""


def _sentinel_options(url: str, options: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(options of the connections to the primary, options of those to the Sentinels)."""
    parsed = parse_url(url)
    primary = {key: parsed[key] for key in ("db", "username", "password") if parsed.get(key) is not None}
    primary.update(options)
    timeout = options.get("socket_timeout") or SENTINEL_TIMEOUT_SECONDS
    sentinel = {"socket_timeout": timeout, "socket_connect_timeout": timeout}
    return primary, sentinel


def _pool_options(max_connections: int | None, pool_timeout: float | None) -> dict[str, Any]:
    if max_connections is None:
        return {}
    return {"max_connections": max_connections, "timeout": pool_timeout}


@dataclass(frozen=True)
class _Flavour:
    """redis-py's classes for one side: blocking or asyncio (two parallel class trees)."""

    client: Any
    blocking_pool: Any
    sentinel: Any
    sentinel_pool: Any
    blocking_sentinel_pool: Any


_SYNC = _Flavour(redis.Redis, redis.BlockingConnectionPool, Sentinel, SentinelConnectionPool,
                 _SentinelBlockingConnectionPool)
_ASYNC = _Flavour(aioredis.Redis, aioredis.BlockingConnectionPool, AsyncSentinel, AsyncSentinelConnectionPool,
                  _AsyncSentinelBlockingConnectionPool)


def redis_client(url: str, *, max_connections: int | None = None, pool_timeout: float | None = None,
                 **options: Any) -> redis.Redis:
    """A client of the Redis at `url`, or of the primary the Sentinels name.

    With `max_connections`, a caller past that many connections waits up to
    `pool_timeout` seconds for one to be free (BlockingConnectionPool) instead of failing.
    Other options (socket_timeout, …) go to every connection.
    """
    client: redis.Redis = _client(_SYNC, url, max_connections, pool_timeout, options)
    return client


def redis_async_client(url: str, *, max_connections: int | None = None, pool_timeout: float | None = None,
                       **options: Any) -> aioredis.Redis:
    """redis_client for asyncio; bound to the event loop that first uses it."""
    client: aioredis.Redis = _client(_ASYNC, url, max_connections, pool_timeout, options)
    return client


def _client(flavour: _Flavour, url: str, max_connections: int | None, pool_timeout: float | None,
            options: dict[str, Any]) -> Any:
    sentinels = settings.REDIS_SENTINELS
    if not sentinels:
        if max_connections is None:
            return flavour.client.from_url(url, **options)
        pool = flavour.blocking_pool.from_url(url, max_connections=max_connections, timeout=pool_timeout, **options)
        return flavour.client(connection_pool=pool)
    primary, sentinel_options = _sentinel_options(url, options)
    manager = flavour.sentinel(sentinels, sentinel_kwargs=sentinel_options, **primary)
    pool_class = flavour.sentinel_pool if max_connections is None else flavour.blocking_sentinel_pool
    return manager.master_for(
        settings.REDIS_SENTINEL_MASTER, connection_pool_class=pool_class,
        **_pool_options(max_connections, pool_timeout),
    )
