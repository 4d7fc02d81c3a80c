"""Per-process fan-out: an in-memory subscription table and one Redis subscription per topic.

Each server process keeps `topic -> local subscriptions` and subscribes once per topic to
Redis pub/sub (one subscription per topic per frontend process, as LinkedIn's realtime
frontends do). The reader task decodes a published message once
and offers it to every local subscription; nothing goes through the Channels layer.

Pub/sub may lose messages (a reconnect, a partition), so it is never trusted for
completeness: every subscription remembers the last id it delivered, replays from the
history whenever it sees a gap or the Redis subscription is (re)confirmed, and drops
duplicates at the seam by id.
"""

import asyncio
import logging
import os
import socket
import weakref
from collections.abc import Iterable
from typing import Any, Protocol

import redis.asyncio as aioredis
from django.conf import settings
from redis.exceptions import RedisError

from realtime.frames import HEARTBEAT, Control, Delivery, Frame
from realtime.history import ahistory_latest_id, ahistory_latest_ids, ahistory_since, history_decode
from realtime.presence import ProcessPresence
from realtime.services import async_client
from realtime.topics import Topic, pubsub_channel, stats_process_key, topic_from_pubsub_channel

logger = logging.getLogger(__name__)


class Sink(Protocol):
    """A connection as the hub sees it: it takes frames without waiting."""

    def offer(self, frame: Frame) -> None: ...

    async def put(self, frame: Frame) -> None:
        """Queue a frame, waiting for room: replays pace themselves on the client."""


class ProcessStats:
    """What this process reports to /metrics through Redis (see _stats_loop)."""

    delivered = 0


STATS = ProcessStats()
# Written when connections come and go (at most every STATS_COALESCE_SECONDS) and at
# least every STATS_INTERVAL_SECONDS; the hash expires after a few missed writes, so a
# dead process stops counting.
STATS_INTERVAL_SECONDS = 5.0
STATS_COALESCE_SECONDS = 0.2


class Subscription:
    """One connection's subscription to one topic, and where it stands in that topic."""

    __slots__ = (
        "sink",
        "topic",
        "last_id",
        "replaying",
        "pending",
        "closed",
        "announced",
        "_task",
        "_again",
    )

    def __init__(self, sink: Sink, topic: Topic, last_id: int | None) -> None:
        self.sink = sink
        self.topic = topic
        # None: start at whatever is latest when the Redis subscription is confirmed.
        self.last_id = last_id
        # While replaying, live messages wait in `pending` so they follow the replay.
        self.replaying = True
        self.pending: list[Delivery] = []
        self.closed = False
        self.announced = False
        self._task: asyncio.Task[None] | None = None
        self._again = False

    def deliver(self, delivery: Delivery) -> None:
        self.last_id = delivery.id
        self.sink.offer(delivery)
        STATS.delivered += 1

    async def replay(self, delivery: Delivery) -> None:
        self.last_id = delivery.id
        await self.sink.put(delivery)
        STATS.delivered += 1


class Hub:
    """The subscription table of this process and its one Redis pub/sub connection."""

    def __init__(self, redis_url: str) -> None:
        self.table: dict[Topic, set[Subscription]] = {}
        self._confirmed: dict[Topic, asyncio.Event] = {}
        self._redis = aioredis.Redis.from_url(redis_url)
        self._pubsub = self._redis.pubsub()
        self._history = async_client()
        self._tasks = [
            asyncio.create_task(self._read_loop(), name="realtime-hub-reader"),
            asyncio.create_task(self._heartbeat_loop(), name="realtime-hub-heartbeat"),
            asyncio.create_task(self._stats_loop(), name="realtime-hub-stats"),
        ]
        self._pending_limit = int(settings.REALTIME_HISTORY_MAX_LENGTH)
        # Connected sinks and the user each acts for (None: anonymous). Strong references:
        # every connection releases itself (Hub.release), and a sink that vanished without
        # it would leave its user counted as present.
        self._sinks: dict[Any, int | None] = {}
        self.presence = ProcessPresence()
        self._subscribing: set[asyncio.Task[None]] = set()  # Redis SUBSCRIBEs in flight
        # redis-py's PubSub is not safe for concurrent (un)subscribes: two first SUBSCRIBEs
        # at once each open a connection and one of them is lost with its channel.
        self._pubsub_lock = asyncio.Lock()
        # The highest id this process has seen per followed topic (from pub/sub or history).
        self._latest: dict[Topic, int] = {}
        self._stats_changed = asyncio.Event()

    # --- subscriptions ---------------------------------------------------------------

    def subscribe(self, sink: Sink, topic: Topic, last_id: int | None) -> Subscription:
        """Register `sink` for `topic`, replaying history after `last_id` first.

        Synchronous on purpose: the subscription is in the table the moment it exists, so a
        connection cancelled right after cannot leave one behind that it does not know of.
        """
        subscription = Subscription(sink, topic, last_id)
        self.table.setdefault(topic, set()).add(subscription)
        if topic not in self._confirmed:
            # The reader's confirmation of the Redis subscription starts the replay:
            # reading history before that could miss what is published in between.
            self._confirmed[topic] = asyncio.Event()
            task = asyncio.create_task(self._redis_subscribe(topic))
            self._subscribing.add(task)
            task.add_done_callback(self._subscribing.discard)
        elif self._is_confirmed(topic):
            latest = self._latest.get(topic)
            if latest is not None and last_id in (None, latest):
                # Starting from now (or from exactly now) on a topic this process already
                # follows: its latest id is known here, no history read (a reconnect storm
                # to one room costs no Redis round trip per connection). Anything pub/sub
                # lost past it shows up as a gap and is read from history then.
                subscription.last_id = latest
                self._go_live(subscription)
            else:
                self.catch_up(subscription)
        return subscription

    async def latest_ids(self, topics: list[Topic]) -> dict[Topic, int]:
        """Where each topic stands now (0: no message yet), for a connection that must know
        its start position before anything is sent: from what this process follows, else
        one Redis round trip. Resuming from these ids later misses nothing."""
        latest = {
            topic: self._latest[topic]
            for topic in topics
            if topic in self._latest and self._is_confirmed(topic)
        }
        unknown = [topic for topic in topics if topic not in latest]
        if unknown:
            latest |= await ahistory_latest_ids(self._history, topics=unknown)
        return {topic: latest[topic] for topic in topics}

    def _is_confirmed(self, topic: Topic) -> bool:
        confirmed = self._confirmed.get(topic)
        return confirmed is not None and confirmed.is_set()

    async def _redis_subscribe(self, topic: Topic) -> None:
        # redis-py only resubscribes channels whose SUBSCRIBE went through: retry until
        # this one does, or nobody here wants the topic any more.
        delay = 0.1
        while topic in self.table:
            try:
                async with self._pubsub_lock:
                    if topic in self.table:
                        await self._pubsub.subscribe(pubsub_channel(topic))
                return
            except RedisError:
                logger.warning("Redis subscribe to %s failed; retrying in %.1fs", topic, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)

    async def unsubscribe(self, subscription: Subscription) -> None:
        subscription.closed = True
        if subscription._task is not None:
            subscription._task.cancel()
        subscribers = self.table.get(subscription.topic)
        if subscribers is None:
            return
        subscribers.discard(subscription)
        if not subscribers:
            del self.table[subscription.topic]
            self._confirmed.pop(subscription.topic, None)
            self._latest.pop(subscription.topic, None)
            try:
                async with self._pubsub_lock:
                    if subscription.topic not in self.table:
                        await self._pubsub.unsubscribe(pubsub_channel(subscription.topic))
            except RedisError:
                logger.warning("Redis unsubscribe from %s failed", subscription.topic)

    # --- live path -------------------------------------------------------------------

    async def _read_loop(self) -> None:
        backoff = 0.1
        while True:
            try:
                if not self._pubsub.subscribed:
                    await asyncio.sleep(0.05)
                    continue
                message = await self._pubsub.get_message(timeout=1.0)
                backoff = 0.1
            except (RedisError, OSError) as exc:
                # redis-py reconnects and resubscribes on the next call; each confirmation
                # then triggers a replay from history (see _on_confirmed).
                logger.warning(
                    "Redis pub/sub connection lost (%s); retrying in %.1fs", exc, backoff
                )
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)
                continue
            if message is None:
                continue
            try:
                kind = message["type"]
                if kind == "message":
                    self._dispatch(message["channel"], message["data"])
                elif kind == "subscribe":
                    self._on_confirmed(message["channel"])
            except Exception:
                logger.exception("realtime hub could not handle %r", message.get("channel"))

    def _on_confirmed(self, channel: bytes) -> None:
        topic = topic_from_pubsub_channel(channel.decode())
        event = self._confirmed.get(topic)
        if event is not None:
            event.set()
        # A confirmation after a reconnect means pub/sub may have lost messages meanwhile.
        for subscription in tuple(self.table.get(topic, ())):
            self.catch_up(subscription)

    def _dispatch(self, channel: bytes, raw: bytes) -> None:
        topic = topic_from_pubsub_channel(channel.decode())
        subscribers = self.table.get(topic)
        if not subscribers:
            return
        delivery = Delivery(history_decode(raw))
        if delivery.id > self._latest.get(topic, 0):
            self._latest[topic] = delivery.id
        for subscription in tuple(subscribers):
            self._offer(subscription, delivery)

    def _offer(self, subscription: Subscription, delivery: Delivery) -> None:
        if subscription.replaying:
            if len(subscription.pending) < self._pending_limit:
                subscription.pending.append(delivery)
            else:
                subscription._again = True  # history has them: read it once more
            return
        last_id = subscription.last_id or 0
        if delivery.id <= last_id:
            return  # already delivered (replay and live overlap at the seam)
        if delivery.id == last_id + 1:
            subscription.deliver(delivery)
            return
        # A gap: pub/sub lost something. Hold this one and fill the gap from history.
        subscription.pending.append(delivery)
        self.catch_up(subscription)

    # --- replay ----------------------------------------------------------------------

    def catch_up(self, subscription: Subscription) -> None:
        """Replay what `subscription` missed from history, then let it go live again."""
        subscription.replaying = True
        if subscription._task is not None and not subscription._task.done():
            subscription._again = True
            return
        subscription._task = asyncio.create_task(self._catch_up(subscription))

    async def _catch_up(self, subscription: Subscription) -> None:
        topic = subscription.topic
        while not subscription.closed:
            subscription._again = False
            try:
                if subscription.last_id is None:
                    subscription.last_id = await ahistory_latest_id(self._history, topic=topic)
                    read = None
                else:
                    read = await ahistory_since(
                        self._history, topic=topic, last_id=subscription.last_id
                    )
            except RedisError as exc:
                logger.warning("history of %s unreadable (%s); retrying", topic, exc)
                await asyncio.sleep(0.5)
                continue
            if subscription.closed:
                return
            if read is not None and read.resync:
                logger.info(
                    "%s: last id %s is past the history window: resync", topic, subscription.last_id
                )
                subscription.last_id = read.latest_id
                await subscription.sink.put(
                    Control("resync", {"topic": str(topic), "id": read.latest_id})
                )
            elif read is not None:
                for message in read.messages:
                    if message["id"] > subscription.last_id and not subscription.closed:
                        await subscription.replay(Delivery(message))
            if not await self._drain_pending(subscription) or subscription._again:
                continue
            if subscription.last_id is not None:
                self._latest[topic] = max(self._latest.get(topic, 0), subscription.last_id)
            self._go_live(subscription)
            return

    def _go_live(self, subscription: Subscription) -> None:
        subscription.replaying = False
        if not subscription.announced:
            # Tells the client the subscription is live and from which id.
            subscription.announced = True
            subscription.sink.offer(
                Control("subscribed", {"topic": str(subscription.topic), "id": subscription.last_id})
            )

    async def _drain_pending(self, subscription: Subscription) -> bool:
        """Deliver held live messages that follow on; False when they leave a gap."""
        while subscription.pending:
            # Messages arriving while this awaits are appended and drained in this loop.
            pending, subscription.pending = subscription.pending, []
            for delivery in sorted(pending, key=lambda d: d.id):
                last_id = subscription.last_id or 0
                if delivery.id <= last_id:
                    continue
                if delivery.id != last_id + 1:
                    return False
                await subscription.replay(delivery)
        return True

    # --- heartbeats ------------------------------------------------------------------

    async def _heartbeat_loop(self) -> None:
        # One timer for the whole process rather than one per connection.
        while True:
            await asyncio.sleep(float(settings.REALTIME_HEARTBEAT_SECONDS))
            for sink in tuple(self._sinks):
                sink.offer(HEARTBEAT)

    async def _stats_loop(self) -> None:
        key = stats_process_key(f"{socket.gethostname()}:{os.getpid()}")
        while True:
            try:
                async with self._history.pipeline(transaction=True) as pipe:
                    pipe.hset(key, mapping={"connections": len(self._sinks), "delivered": STATS.delivered})
                    pipe.pexpire(key, int(3 * STATS_INTERVAL_SECONDS * 1000))
                    await pipe.execute()
            except RedisError as exc:
                logger.warning("realtime stats not written (%s)", exc)
            self._stats_changed.clear()
            # asyncio.timeout, not wait_for: Python 3.11's wait_for swallows a cancellation
            # that arrives as the event is set, and the loop would then outlive its server.
            try:
                async with asyncio.timeout(STATS_INTERVAL_SECONDS):
                    await self._stats_changed.wait()
            except TimeoutError:
                continue
            await asyncio.sleep(STATS_COALESCE_SECONDS)

    def attach(self, sink: Sink, user_id: int | None) -> None:
        """Send heartbeats to `sink` while it is connected, subscribed or not, and count
        its user as present."""
        self._sinks[sink] = user_id
        if user_id is not None:
            self.presence.join(user_id)
        self._stats_changed.set()

    async def release(self, sink: Sink, subscriptions: Iterable[Subscription]) -> None:
        """A connection is gone: no more heartbeats or presence, its subscriptions end."""
        user_id = self._sinks.pop(sink, None)
        if user_id is not None:
            self.presence.leave(user_id)
        self._stats_changed.set()
        for subscription in subscriptions:
            await self.unsubscribe(subscription)


_hubs: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Hub]" = weakref.WeakKeyDictionary()


def get_hub() -> Hub:
    """The hub of the running event loop (one per server process in production)."""
    loop = asyncio.get_running_loop()
    hub = _hubs.get(loop)
    if hub is None:
        hub = _hubs[loop] = Hub(settings.REALTIME_REDIS_URL)
    return hub
