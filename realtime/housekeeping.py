"""What the hub does for every connection of the process, subscribed or not: heartbeats,
presence, and the process's numbers for /metrics."""

import asyncio
import logging
import os
import socket
from collections.abc import Callable

import redis.asyncio as aioredis
from django.conf import settings
from redis.exceptions import RedisError

from realtime.frames import HEARTBEAT
from realtime.loops import cancellation_pending_raise
from realtime.presence import ProcessPresence
from realtime.subscriptions import Sink
from realtime.topics import stats_process_key

logger = logging.getLogger(__name__)

# The process's numbers are written when connections come and go (at most every
# STATS_COALESCE_SECONDS) and at least every STATS_INTERVAL_SECONDS; the hash expires after
# a few missed writes, so a dead process stops counting.
STATS_INTERVAL_SECONDS = 5.0
STATS_COALESCE_SECONDS = 0.2


class Housekeeping:
    """The connections of this process and the periodic work they need."""

    def __init__(self, client: aioredis.Redis, *, delivered: Callable[[], int]) -> None:
        self._client = client
        self._delivered = delivered
        # Connected sinks and the user each acts for (None: anonymous). Strong references:
        # every connection detaches itself (Hub.release), and a sink that vanished without
        # it would leave its user counted as present.
        self.sinks: dict[Sink, int | None] = {}
        self.presence = ProcessPresence()
        self._changed = asyncio.Event()
        self._tasks = [
            asyncio.create_task(self._heartbeat_loop(), name="realtime-hub-heartbeat"),
            asyncio.create_task(self._stats_loop(), name="realtime-hub-stats"),
        ]

    def attach(self, sink: Sink, user_id: int | None) -> None:
        """Send heartbeats to `sink` while it is connected, and count its user as present."""
        self.sinks[sink] = user_id
        if user_id is not None:
            self.presence.join(user_id)
        self._changed.set()

    def detach(self, sink: Sink) -> None:
        """`sink` is gone: no more heartbeats, and its user counts one connection less."""
        user_id = self.sinks.pop(sink, None)
        if user_id is not None:
            self.presence.leave(user_id)
        self._changed.set()

    async def _heartbeat_loop(self) -> None:
        # One timer for the whole process rather than one per connection.
        while True:
            await asyncio.sleep(float(settings.REALTIME_HEARTBEAT_SECONDS))
            for sink in tuple(self.sinks):
                sink.offer(HEARTBEAT)

    async def _stats_loop(self) -> None:
        key = stats_process_key(f"{socket.gethostname()}:{os.getpid()}")
        while True:
            cancellation_pending_raise()
            try:
                async with self._client.pipeline(transaction=True) as pipe:
                    pipe.hset(key, mapping={"connections": len(self.sinks), "delivered": self._delivered()})
                    pipe.pexpire(key, int(3 * STATS_INTERVAL_SECONDS * 1000))
                    await pipe.execute()
            except RedisError as exc:
                logger.warning("realtime stats not written (%s)", exc)
            self._changed.clear()
            # asyncio.timeout, not wait_for: Python 3.11's wait_for swallows a cancellation
            # that arrives as the event is set, and the loop would then outlive its server
            # (asyncio.timeout has a case of its own: see realtime/loops.py).
            try:
                async with asyncio.timeout(STATS_INTERVAL_SECONDS):
                    await self._changed.wait()
            except TimeoutError:
                continue
            await asyncio.sleep(STATS_COALESCE_SECONDS)
