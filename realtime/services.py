"""Publishing to topics: append to the bounded history, then Redis pub/sub (one script)."""

import asyncio
import json
import logging
import weakref
from functools import cache
from typing import Any

import redis
import redis.asyncio as aioredis
from django.conf import settings

from core.redis import redis_async_client, redis_client
from realtime.exceptions import InvalidMessage, MessageTooLarge
from realtime.history import ahistory_append, history_append_many
from realtime.topics import Topic, topic_parse

logger = logging.getLogger(__name__)


# redis-py's default pool raises "Too many connections" past its size; a connection storm
# or a burst of publishes must wait for a free connection instead (found by manage.py
# bench connections: handshakes refused and history reads retried by the thousand).
POOL_CONNECTIONS = 100
POOL_WAIT_SECONDS = 10


@cache
def sync_client() -> redis.Redis:
    return redis_client(settings.REALTIME_REDIS_URL, max_connections=POOL_CONNECTIONS, pool_timeout=POOL_WAIT_SECONDS)


# redis.asyncio clients are bound to the loop that first used them; tests run several loops.
_async_clients: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, aioredis.Redis]" = (
    weakref.WeakKeyDictionary()
)


def async_client() -> aioredis.Redis:
    """The redis.asyncio client of the running event loop."""
    loop = asyncio.get_running_loop()
    client = _async_clients.get(loop)
    if client is None:
        client = _async_clients[loop] = redis_async_client(
            settings.REALTIME_REDIS_URL, max_connections=POOL_CONNECTIONS, pool_timeout=POOL_WAIT_SECONDS
        )
    return client


def message_encode(*, topic: Topic, event: str, data: Any) -> str:
    """The message as history and pub/sub carry it; raise InvalidMessage unless `data` is a
    JSON object, MessageTooLarge past REALTIME_MAX_MESSAGE_BYTES.

    Every subscriber of the topic receives the message and its history keeps it (up to
    REALTIME_HISTORY_MAX_LENGTH of them), so the bound is on every publish, whoever calls.
    """
    if not isinstance(data, dict):
        raise InvalidMessage(
            f"data must be a JSON object, not {type(data).__name__}: {{\"likes\": 3}}",
            detail={"data": ["must be a JSON object"]},
        )
    try:
        # allow_nan=False: NaN is not JSON, and browsers' JSON.parse would refuse the frame.
        body = json.dumps(
            {"topic": str(topic), "event": event, "data": data}, separators=(",", ":"), allow_nan=False
        )
    except (TypeError, ValueError) as exc:
        raise InvalidMessage(
            f"data is not JSON: {exc}", detail={"data": ["must hold only JSON values"]}
        ) from exc
    size, limit = len(body.encode()), int(settings.REALTIME_MAX_MESSAGE_BYTES)
    if size > limit:
        raise MessageTooLarge(
            f"the message is {size} bytes encoded, over the limit of {limit}: publish an id "
            "and a summary, and let clients fetch the rest from the API",
            detail={"size": size, "limit": limit},
        )
    return body


def realtime_publish(*, topic: str, event: str, data: Any) -> int:
    """Publish `event` with `data` (a JSON object) to `topic`; return the message id."""
    return realtime_publish_many([(topic, event, data)])[0]


def realtime_publish_many(messages: list[tuple[str, str, Any]]) -> list[int]:
    """Publish (topic, event, data) messages in one round trip to Redis; return their ids.

    Each is checked as `realtime_publish` checks one, all before any is published."""
    encoded = []
    for topic, event, data in messages:
        parsed = topic_parse(topic)
        encoded.append((parsed, message_encode(topic=parsed, event=event, data=data)))
    message_ids = history_append_many(sync_client(), encoded)
    logger.debug("published %d messages, last #%s", len(message_ids), message_ids[-1] if message_ids else None)
    return message_ids


async def arealtime_publish(*, topic: str, event: str, data: Any) -> int:
    """Async `realtime_publish`."""
    parsed = topic_parse(topic)
    body = message_encode(topic=parsed, event=event, data=data)
    message_id = await ahistory_append(async_client(), topic=parsed, body=body)
    logger.debug("published %s #%s on %s", event, message_id, topic)
    return message_id
