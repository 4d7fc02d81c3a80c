"""Per-process fan-out: the one object WebSocket and SSE connections talk to.

A published message reaches a connection this way: realtime_publish → the history's Lua
script (which PUBLISHes it) → this process's Redis subscription (realtime/pubsub.py) →
the subscription table (realtime/subscriptions.py), which offers it to each local follower
→ the connection's bounded queue. Nothing goes through the Channels layer.

The table decides, this hub carries out what needs waiting: the Redis (un)subscribes, the
history reads of a subscription that must catch up (on subscribe, on a gap, after Redis
confirmed a subscription again), and the replays into connections. Heartbeats, presence
and metrics are realtime/housekeeping.py's.
"""

import asyncio
import logging
import weakref
from collections.abc import Iterable

from django.conf import settings
from redis.exceptions import RedisError

from realtime.frames import Delivery, Frame
from realtime.history import (
    HistoryRead,
    ahistory_latest_id,
    ahistory_latest_ids,
    ahistory_since,
    history_decode,
)
from realtime.housekeeping import Housekeeping
from realtime.pubsub import PubSubLink
from realtime.services import async_client
from realtime.subscriptions import Join, Sink, Subscription, SubscriptionTable
from realtime.topics import Topic

logger = logging.getLogger(__name__)

HISTORY_RETRY_SECONDS = 0.5


class Hub:
    """This process's subscription table, the Redis link that feeds it, and its
    connections' housekeeping."""

    def __init__(self, redis_url: str) -> None:
        # A replaying subscription holds at most as many live messages as history keeps.
        self.table = SubscriptionTable(pending_limit=int(settings.REALTIME_HISTORY_MAX_LENGTH))
        self._history = async_client()
        self.link = PubSubLink(
            redis_url,
            wanted=self.table.follows,
            on_message=self._on_message,
            on_confirmed=self._on_confirmed,
        )
        self.housekeeping = Housekeeping(self._history, delivered=lambda: self.table.delivered)
        self._catch_ups: dict[Subscription, asyncio.Task[None]] = {}

    # --- connections -------------------------------------------------------------------

    def attach(self, sink: Sink, user_id: int | None) -> None:
        """Send heartbeats to `sink` while it is connected, subscribed or not, and count
        its user as present."""
        self.housekeeping.attach(sink, user_id)

    async def release(self, sink: Sink, subscriptions: Iterable[Subscription]) -> None:
        """A connection is gone: no more heartbeats or presence, its subscriptions end."""
        self.housekeeping.detach(sink)
        for subscription in subscriptions:
            await self.unsubscribe(subscription)

    def subscribe(self, sink: Sink, topic: Topic, last_id: int | None) -> Subscription:
        """Register `sink` for `topic`, replaying history after `last_id` first.

        Synchronous on purpose: the subscription is in the table the moment it exists, so a
        connection cancelled right after cannot leave one behind that it does not know of.
        """
        subscription, join = self.table.follow(sink, topic, last_id)
        if join is Join.SUBSCRIBE_UPSTREAM:
            self.link.subscribe(topic)
        elif join is Join.CATCH_UP:
            self._catch_up(subscription)
        return subscription

    async def unsubscribe(self, subscription: Subscription) -> None:
        task = self._catch_ups.pop(subscription, None)
        if task is not None:
            task.cancel()
        if self.table.unfollow(subscription):
            await self.link.unsubscribe(subscription.topic)

    async def latest_ids(self, topics: list[Topic]) -> dict[Topic, int]:
        """Where each topic stands now (0: no message yet), for a connection that must know
        its start position before anything is sent: from what this process follows, else
        one Redis round trip. Resuming from these ids later misses nothing."""
        latest = self.table.known_latest(topics)
        unknown = [topic for topic in topics if topic not in latest]
        if unknown:
            latest |= await ahistory_latest_ids(self._history, topics=unknown)
        return {topic: latest[topic] for topic in topics}

    # --- from the Redis link -----------------------------------------------------------

    def _on_message(self, topic: Topic, raw: bytes) -> None:
        if not self.table.follows(topic):
            return  # nobody here follows it any more (its UNSUBSCRIBE is on its way)
        for subscription in self.table.route(topic, Delivery(history_decode(raw))):
            self._catch_up(subscription)

    def _on_confirmed(self, topic: Topic) -> None:
        for subscription in self.table.confirmed(topic):
            self._catch_up(subscription)

    # --- catching up from history ------------------------------------------------------

    def _catch_up(self, subscription: Subscription) -> None:
        """Replay what `subscription` missed from history, then let it go live again."""
        self.table.hold(subscription)
        if subscription not in self._catch_ups:
            self._catch_ups[subscription] = asyncio.create_task(self._catch_up_loop(subscription))

    async def _catch_up_loop(self, subscription: Subscription) -> None:
        try:
            while not subscription.closed:
                self.table.reading(subscription)
                try:
                    read = await self._read_history(subscription)
                except RedisError as exc:
                    logger.warning("history of %s unreadable (%s); retrying", subscription.topic, exc)
                    await asyncio.sleep(HISTORY_RETRY_SECONDS)
                    continue
                if subscription.closed:
                    return
                await self._replay(subscription, self.table.missed(subscription, read))
                if await self._replay_held(subscription) and self.table.go_live(subscription):
                    return
        finally:
            self._catch_ups.pop(subscription, None)

    async def _read_history(self, subscription: Subscription) -> HistoryRead:
        if subscription.last_id is None:
            latest = await ahistory_latest_id(self._history, topic=subscription.topic)
            return HistoryRead([], latest)
        return await ahistory_since(
            self._history, topic=subscription.topic, last_id=subscription.last_id
        )

    async def _replay_held(self, subscription: Subscription) -> bool:
        """Send the live messages held during the replay; False when they leave a gap."""
        while subscription.pending:
            # Messages arriving while this awaits are held again and sent by this loop.
            run, complete = self.table.follow_on(subscription)
            await self._replay(subscription, run)
            if not complete:
                return False
        return True

    async def _replay(self, subscription: Subscription, frames: Iterable[Frame]) -> None:
        for frame in frames:
            if subscription.closed:
                return
            self.table.replayed(subscription, frame)
            await subscription.sink.put(frame)


_hubs: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Hub]" = weakref.WeakKeyDictionary()


def get_hub() -> Hub:
    """The hub of the running event loop (one per server process in production)."""
    loop = asyncio.get_running_loop()
    hub = _hubs.get(loop)
    if hub is None:
        hub = _hubs[loop] = Hub(settings.REALTIME_REDIS_URL)
    return hub
