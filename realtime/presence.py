"""Presence: is a user connected anywhere, across every frontend process.

Each authenticated connection is a member of the user's sorted set in Redis, scored by
when it expires; the hub's heartbeat pushes that forward, so a process that dies without
cleaning up stops counting after REALTIME_PRESENCE_TTL_SECONDS. Online/offline events go to
the broadcast topic `live:presence`, debounced: going offline is announced only after
REALTIME_PRESENCE_GRACE_SECONDS with no connection, and a state key makes each transition
announced once, so a flapping mobile connection does not flicker.
"""

import asyncio
import logging
import time
import uuid

import redis.asyncio as aioredis
from django.conf import settings
from redis.exceptions import RedisError

from realtime.services import arealtime_publish, async_client
from realtime.topics import presence_key, presence_state_key

logger = logging.getLogger(__name__)

PRESENCE_TOPIC = "live:presence"


def _now_ms() -> int:
    return int(time.time() * 1000)


def _ttl_ms() -> int:
    return int(settings.REALTIME_PRESENCE_TTL_SECONDS * 1000)


async def presence_online_users(client: aioredis.Redis, *, user_ids: list[int]) -> dict[int, bool]:
    """Which of `user_ids` have a live connection right now."""
    async with client.pipeline(transaction=False) as pipe:
        for user_id in user_ids:
            pipe.zcount(presence_key(user_id), _now_ms(), "+inf")
        counts = await pipe.execute()
    return {user_id: count > 0 for user_id, count in zip(user_ids, counts, strict=True)}


class PresenceTracker:
    """One connection's presence: joined on connect, refreshed by heartbeats, left on close."""

    def __init__(self, user_id: int) -> None:
        self.user_id = user_id
        self.member = uuid.uuid4().hex
        self.client = async_client()
        # Strong references: asyncio keeps only weak ones to running tasks.
        self._tasks: set[asyncio.Task[None]] = set()

    async def join(self) -> None:
        try:
            await self._join()
        except RedisError:
            # Presence is best effort: a connection works without it.
            logger.warning("presence of user %s not recorded: Redis unavailable", self.user_id)

    async def _join(self) -> None:
        key = presence_key(self.user_id)
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.zadd(key, {self.member: _now_ms() + _ttl_ms()})
            pipe.pexpire(key, _ttl_ms())
            pipe.set(presence_state_key(self.user_id), "online", nx=True)
            # The state expires too, so a crashed process cannot leave a user "online"
            # (and their next connection unannounced) for ever.
            pipe.pexpire(presence_state_key(self.user_id), _ttl_ms())
            _, _, became_online, _ = await pipe.execute()
        if became_online:
            await self._announce(online=True)

    def refresh_soon(self) -> None:
        """Push this connection's expiry forward (called on each heartbeat)."""
        task = asyncio.create_task(self.join())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def leave(self) -> None:
        try:
            await self.client.zrem(presence_key(self.user_id), self.member)
        except RedisError:
            logger.warning("presence of user %s not cleared: Redis unavailable", self.user_id)
            return
        task = asyncio.create_task(self._offline_after_grace())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _offline_after_grace(self) -> None:
        await asyncio.sleep(float(settings.REALTIME_PRESENCE_GRACE_SECONDS))
        # Online again meanwhile (a flap), or another connection is open: say nothing.
        online = (await presence_online_users(self.client, user_ids=[self.user_id]))[self.user_id]
        if not online and await self.client.delete(presence_state_key(self.user_id)):
            await self._announce(online=False)

    async def _announce(self, *, online: bool) -> None:
        event = "presence.online" if online else "presence.offline"
        logger.info("user %s %s", self.user_id, event)
        await arealtime_publish(
            topic=PRESENCE_TOPIC, event=event, data={"user_id": self.user_id, "online": online}
        )


def presence_online_users_sync(*, user_ids: list[int]) -> dict[int, bool]:
    """`presence_online_users` for synchronous views."""
    from realtime.services import sync_client

    pipe = sync_client().pipeline(transaction=False)
    for user_id in user_ids:
        pipe.zcount(presence_key(user_id), _now_ms(), "+inf")
    counts = pipe.execute()
    return {user_id: count > 0 for user_id, count in zip(user_ids, counts, strict=True)}
