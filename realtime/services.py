"""Publishing to topics: append to the bounded history, then Redis pub/sub (one script)."""

import asyncio
import logging
import weakref
from functools import cache
from typing import Any

import redis
import redis.asyncio as aioredis
from django.conf import settings

from realtime.history import ahistory_append, history_append
from realtime.topics import topic_parse

logger = logging.getLogger(__name__)


# redis-py's default pool raises "Too many connections" past its size; a connection storm
# or a burst of publishes must wait for a free connection instead (found by manage.py
# bench connections: handshakes refused and history reads retried by the thousand).
POOL_CONNECTIONS = 100
POOL_WAIT_SECONDS = 10


@cache
def sync_client() -> redis.Redis:
    pool = redis.BlockingConnectionPool.from_url(
        settings.REALTIME_REDIS_URL, max_connections=POOL_CONNECTIONS, timeout=POOL_WAIT_SECONDS
    )
    return redis.Redis(connection_pool=pool)


# redis.asyncio clients are bound to the loop that first used them; tests run several loops.
_async_clients: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, aioredis.Redis]" = (
    weakref.WeakKeyDictionary()
)


def async_client() -> aioredis.Redis:
    """The redis.asyncio client of the running event loop."""
    loop = asyncio.get_running_loop()
    client = _async_clients.get(loop)
    if client is None:
        pool = aioredis.BlockingConnectionPool.from_url(
            settings.REALTIME_REDIS_URL, max_connections=POOL_CONNECTIONS, timeout=POOL_WAIT_SECONDS
        )
        client = _async_clients[loop] = aioredis.Redis(connection_pool=pool)
    return client


def realtime_publish(*, topic: str, event: str, data: Any) -> int:
    """Publish `event` with JSON-serialisable `data` to `topic`; return the message id."""
    message_id = history_append(sync_client(), topic=topic_parse(topic), event=event, data=data)
    logger.debug("published %s #%s on %s", event, message_id, topic)
    return message_id


async def arealtime_publish(*, topic: str, event: str, data: Any) -> int:
    """Async `realtime_publish`."""
    parsed = topic_parse(topic)
    message_id = await ahistory_append(async_client(), topic=parsed, event=event, data=data)
    logger.debug("published %s #%s on %s", event, message_id, topic)
    return message_id
