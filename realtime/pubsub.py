"""The process's one Redis pub/sub connection: subscribe, reconnect, resubscribe, read.

One subscription per topic per server process, whatever the number of local connections
on it (as LinkedIn's realtime frontends do). This link knows nothing of connections: it
asks `wanted` whether a topic is still followed, and hands each raw published message and
each subscription confirmation on to the hub, which decides what they mean.
"""

import asyncio
import logging
from collections.abc import Callable

from redis.exceptions import RedisError

from core.redis import redis_async_client
from realtime.loops import cancellation_pending_raise
from realtime.topics import Topic, pubsub_channel, topic_from_pubsub_channel

logger = logging.getLogger(__name__)

# Reconnect and retry delays double from the first to the last: quick after a blip,
# without hammering a Redis that is restarting.
BACKOFF_FIRST_SECONDS = 0.1
BACKOFF_MAX_SECONDS = 2.0


class PubSubLink:
    """A Redis pub/sub connection whose subscriptions follow what the hub wants."""

    def __init__(
        self,
        redis_url: str,
        *,
        wanted: Callable[[Topic], bool],
        on_message: Callable[[Topic, bytes], None],
        on_confirmed: Callable[[Topic], None],
    ) -> None:
        self._wanted = wanted
        self._on_message = on_message
        self._on_confirmed = on_confirmed
        self._redis = redis_async_client(redis_url)
        self._pubsub = self._redis.pubsub()
        # redis-py's PubSub is not safe for concurrent (un)subscribes: two first SUBSCRIBEs
        # at once each open a connection and one of them is lost with its channel.
        self._lock = asyncio.Lock()
        self._subscribing: set[asyncio.Task[None]] = set()  # SUBSCRIBEs in flight
        self._reader = asyncio.create_task(self._read_loop(), name="realtime-hub-reader")

    def subscribe(self, topic: Topic) -> None:
        """Subscribe to `topic` in the background; `on_confirmed` says when Redis has."""
        task = asyncio.create_task(self._subscribe(topic))
        self._subscribing.add(task)
        task.add_done_callback(self._subscribing.discard)

    async def _subscribe(self, topic: Topic) -> None:
        # redis-py only resubscribes channels whose SUBSCRIBE went through: retry until
        # this one does, or nobody here wants the topic any more.
        delay = BACKOFF_FIRST_SECONDS
        while self._wanted(topic):
            cancellation_pending_raise()
            try:
                async with self._lock:
                    if self._wanted(topic):
                        await self._pubsub.subscribe(pubsub_channel(topic))
                return
            except RedisError:
                logger.warning("Redis subscribe to %s failed; retrying in %.1fs", topic, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, BACKOFF_MAX_SECONDS)

    async def unsubscribe(self, topic: Topic) -> None:
        """Unsubscribe from `topic`, unless it was wanted again meanwhile."""
        try:
            async with self._lock:
                if not self._wanted(topic):
                    await self._pubsub.unsubscribe(pubsub_channel(topic))
        except RedisError:
            logger.warning("Redis unsubscribe from %s failed", topic)

    async def _read_loop(self) -> None:
        backoff = BACKOFF_FIRST_SECONDS
        while True:
            cancellation_pending_raise()
            try:
                if not self._pubsub.subscribed:
                    await asyncio.sleep(0.05)
                    continue
                message = await self._pubsub.get_message(timeout=1.0)
                backoff = BACKOFF_FIRST_SECONDS
            except (RedisError, OSError) as exc:
                # redis-py reconnects and resubscribes every channel on the next call; each
                # confirmation then reaches the hub, which repairs what was lost meanwhile
                # from the history.
                logger.warning(
                    "Redis pub/sub connection lost (%s); retrying in %.1fs", exc, backoff
                )
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX_SECONDS)
                continue
            if message is None:
                continue
            try:
                kind = message["type"]
                if kind == "message":
                    topic = topic_from_pubsub_channel(message["channel"].decode())
                    self._on_message(topic, message["data"])
                elif kind == "subscribe":
                    self._on_confirmed(topic_from_pubsub_channel(message["channel"].decode()))
            except Exception:
                logger.exception("realtime hub could not handle %r", message.get("channel"))
