"""Presence: is a user connected anywhere, across every frontend process.

Each server process with a connection of a user is a member of that user's sorted set in
Redis, scored by when it expires; the process pushes that forward every heartbeat period,
so a process that dies without cleaning up stops counting after
REALTIME_PRESENCE_TTL_SECONDS. Online/offline events go to the broadcast topic
`live:presence`, debounced: a process leaves a user's set only after
REALTIME_PRESENCE_GRACE_SECONDS with no connection there (shorter than the TTL), offline is
announced when no member is left, and a state key makes each transition announced once, so
a flapping mobile connection does not flicker.
"""

import asyncio
import logging
import os
import socket
import time
import uuid

from django.conf import settings
from redis.exceptions import RedisError

from realtime.loops import cancellation_pending_raise
from realtime.services import arealtime_publish, async_client, sync_client
from realtime.topics import presence_key, presence_state_key

logger = logging.getLogger(__name__)

PRESENCE_TOPIC = "live:presence"


def _now_ms() -> int:
    return int(time.time() * 1000)


def _ttl_ms() -> int:
    return int(settings.REALTIME_PRESENCE_TTL_SECONDS * 1000)


# Delete the state key only if no member is left, in one step: a connection that joins on
# another process in between either lands before (its member counts: no offline) or after
# (its SET NX succeeds: it announces online again).
_OFFLINE_IF_EMPTY = """
if redis.call('ZCOUNT', KEYS[1], ARGV[1], '+inf') == 0 then
  return redis.call('DEL', KEYS[2])
end
return 0
"""


class ProcessPresence:
    """This process's part of presence: one member per user with connections here.

    Connections only count up and down in memory; one task writes to Redis, so the writes
    of one process never race each other and a burst of connects is one pipeline. Per
    heartbeat period it refreshes every user of the process in one pass, not one Redis
    transaction per connection (at 20,000 connections the old per-connection refresh
    exhausted the Redis pool and took the process down with it: bench connections).
    """

    def __init__(self) -> None:
        self.member = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.client = async_client()
        self._offline_if_empty = self.client.register_script(_OFFLINE_IF_EMPTY)
        self.connections: dict[int, int] = {}
        # Users with no connection here any more, since when (monotonic): still members
        # in Redis until the grace period ends, so a reconnect in it writes nothing.
        self.left_at: dict[int, float] = {}
        self._joined: set[int] = set()
        self._wake = asyncio.Event()
        self._task = asyncio.create_task(self._write_loop(), name="realtime-presence")

    def join(self, user_id: int) -> None:
        count = self.connections.get(user_id, 0) + 1
        self.connections[user_id] = count
        if count == 1 and self.left_at.pop(user_id, None) is None:
            self._joined.add(user_id)
            self._wake.set()

    def leave(self, user_id: int) -> None:
        count = self.connections.get(user_id, 0) - 1
        if count > 0:
            self.connections[user_id] = count
            return
        self.connections.pop(user_id, None)
        self._joined.discard(user_id)
        self.left_at[user_id] = time.monotonic()
        self._wake.set()

    async def _write_loop(self) -> None:
        heartbeat = float(settings.REALTIME_HEARTBEAT_SECONDS)
        grace = float(settings.REALTIME_PRESENCE_GRACE_SECONDS)
        next_refresh = time.monotonic() + heartbeat
        backoff = 0.1
        while True:
            cancellation_pending_raise()
            now = time.monotonic()
            wake_at = min([next_refresh, *(left + grace for left in self.left_at.values())])
            if not self._joined and wake_at > now:
                try:  # not wait_for: see Housekeeping._stats_loop
                    async with asyncio.timeout(wake_at - now):
                        await self._wake.wait()
                except TimeoutError:
                    pass
            self._wake.clear()
            try:
                if time.monotonic() >= next_refresh:
                    self._joined.clear()
                    await self._write_members(list(self.connections))
                    next_refresh = time.monotonic() + heartbeat
                elif self._joined:
                    # Joins that arrive while this writes wait for the next pass.
                    joined = list(self._joined)
                    await self._write_members(joined)
                    self._joined.difference_update(joined)
                await self._write_leaves(grace)
                backoff = 0.1
            except RedisError as exc:
                # Presence is best effort: connections work without it; the writes are
                # retried (joins are kept, the refresh and leaves come round again).
                logger.warning("presence not written (%s); retrying in %.1fs", exc, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)

    async def _write_members(self, users: list[int]) -> None:
        """Make this process a member of each user's set until a TTL from now; announce
        those whose state was not set (new, or lost with a Redis restart) as online."""
        for first in range(0, len(users), 1000):
            batch = users[first : first + 1000]
            expires = _now_ms() + _ttl_ms()
            async with self.client.pipeline(transaction=False) as pipe:
                for user_id in batch:
                    pipe.zadd(presence_key(user_id), {self.member: expires})
                    pipe.pexpire(presence_key(user_id), _ttl_ms())
                    pipe.set(presence_state_key(user_id), "online", nx=True)
                    # The state expires too, so a crashed process cannot leave a user
                    # "online" (and their next connection unannounced) for ever.
                    pipe.pexpire(presence_state_key(user_id), _ttl_ms())
                results = await pipe.execute()
            for index, user_id in enumerate(batch):
                if results[index * 4 + 2]:
                    await _announce(user_id, online=True)

    async def _write_leaves(self, grace: float) -> None:
        due = [user for user, left in self.left_at.items() if time.monotonic() - left >= grace]
        if not due:
            return
        async with self.client.pipeline(transaction=False) as pipe:
            for user_id in due:
                pipe.zrem(presence_key(user_id), self.member)
            await pipe.execute()
        for user_id in due:
            del self.left_at[user_id]
            # Online again elsewhere meanwhile, or another connection is open: say nothing.
            keys = [presence_key(user_id), presence_state_key(user_id)]
            if await self._offline_if_empty(keys=keys, args=[_now_ms()]):
                await _announce(user_id, online=False)


async def _announce(user_id: int, *, online: bool) -> None:
    event = "presence.online" if online else "presence.offline"
    logger.info("user %s %s", user_id, event)
    await arealtime_publish(topic=PRESENCE_TOPIC, event=event, data={"user_id": user_id, "online": online})


def presence_online_users(*, user_ids: list[int]) -> dict[int, bool]:
    """Which of `user_ids` have a live connection right now, on any process."""
    pipe = sync_client().pipeline(transaction=False)
    for user_id in user_ids:
        pipe.zcount(presence_key(user_id), _now_ms(), "+inf")
    counts = pipe.execute()
    return {user_id: count > 0 for user_id, count in zip(user_ids, counts, strict=True)}
