"""Bounded per-topic history in Redis, with per-topic ids that only go up.

One Lua script takes the next id (INCR), appends the message to a sorted set scored by
id, trims it by length and age, and PUBLISHes it: history and pub/sub see the same
message, and concurrent publishers cannot interleave their ids and publishes. The
sequence key never expires, so a topic never hands out an id twice while Redis keeps
its data (append-only file, platform/redis/redis.conf), nor after a failover lost some
of it (the epoch, below).
"""

import hashlib
import json
import logging
import time
from dataclasses import dataclass
from typing import Any, TypedDict

import redis
import redis.asyncio as aioredis
from django.conf import settings
from redis.exceptions import NoScriptError

from realtime.topics import (
    PRIMARY_KEY,
    STATS_PUBLISHED_KEY,
    Topic,
    history_key,
    history_key_pattern,
    pubsub_channel,
    sequence_key,
)

logger = logging.getLogger(__name__)

# KEYS: sequence, history, pub/sub channel, published counter, primary. ARGV: now (ms),
# max length, max age (ms), the message as a JSON object without id/ts (spliced in below,
# so no JSON library runs on the publish path except to read a trimmed head's timestamp).
#
# The primary key remembers which Redis primary (its replication id) the appends ran on,
# and the epoch: how many failovers it has seen. A failover promotes a replica that may
# lack the last writes, ids included, which clients already hold. A promoted replica is
# recognised by its second replication id (the one it inherited; a Redis that merely
# restarted has none): then the next epoch starts, and each topic's counter jumps to
# epoch * 2^32 before its next id, so no id is handed out twice, and a client resuming
# from a lost id finds a gap in the history: `resync`, never a silent skip. Every topic
# pays one `resync` per failover, lost writes or not: Redis cannot tell which it lost.
# INFO costs half an append, so it is asked at most every PRIMARY_CHECK_MS (ARGV[5]): that
# must stay below Sentinel's down-after-milliseconds (5 s), so that the last check a
# promoted replica inherited is always older than that. The publishers' clocks decide;
# one ahead or behind makes the others check more often, never less.
APPEND_SCRIPT = """
local now = tonumber(ARGV[1])
local primary = redis.call('HMGET', KEYS[5], 'replid', 'epoch', 'checked')
local epoch = tonumber(primary[2] or '0')
local checked = tonumber(primary[3] or '0')
if now - checked >= tonumber(ARGV[5]) or now < checked then
    local info = redis.call('INFO', 'replication')
    local replid = string.match(info, 'master_replid:(%w+)')
    local promoted = string.match(info, 'master_replid2:(%w+)') ~= string.rep('0', 40)
    if primary[1] and primary[1] ~= replid and promoted then epoch = epoch + 1 end
    redis.call('HSET', KEYS[5], 'replid', replid, 'epoch', epoch, 'checked', now)
end
if epoch > 0 then
    local floor = epoch * 4294967296
    if tonumber(redis.call('GET', KEYS[1]) or '0') < floor then
        redis.call('SET', KEYS[1], string.format('%.0f', floor))
    end
end
local id = redis.call('INCR', KEYS[1])
local message = '{"id":' .. id .. ',"ts":' .. now .. ',' .. string.sub(ARGV[4], 2)
redis.call('ZADD', KEYS[2], id, message)
local excess = redis.call('ZCARD', KEYS[2]) - tonumber(ARGV[2])
if excess > 0 then
    redis.call('ZREMRANGEBYRANK', KEYS[2], 0, excess - 1)
end
local oldest = now - tonumber(ARGV[3])
while true do
    local head = redis.call('ZRANGE', KEYS[2], 0, 0)
    if #head == 0 or cjson.decode(head[1]).ts >= oldest then break end
    redis.call('ZREMRANGEBYRANK', KEYS[2], 0, 0)
end
redis.call('PEXPIRE', KEYS[2], ARGV[3])
redis.call('PUBLISH', KEYS[3], message)
redis.call('INCR', KEYS[4])
return id
"""


PRIMARY_CHECK_MS = 500

APPEND_SHA = hashlib.sha1(APPEND_SCRIPT.encode()).hexdigest()  # noqa: S324 - Redis names scripts by SHA-1


# KEYS: history. ARGV: now (ms), max age (ms). The append script's trim, for topics
# nobody publishes to any more (their old messages would otherwise wait for the key to
# expire).
TRIM_SCRIPT = """
local oldest = tonumber(ARGV[1]) - tonumber(ARGV[2])
local removed = 0
while true do
    local head = redis.call('ZRANGE', KEYS[1], 0, 0)
    if #head == 0 or cjson.decode(head[1]).ts >= oldest then break end
    redis.call('ZREMRANGEBYRANK', KEYS[1], 0, 0)
    removed = removed + 1
end
return removed
"""


class Message(TypedDict):
    topic: str
    id: int
    ts: int
    event: str
    data: Any


@dataclass(frozen=True, slots=True)
class HistoryRead:
    """What the history holds after some id, and where the topic's counter stands.

    Whether that covers everything a client missed, or the client must resync, is the
    subscription table's decision (realtime/subscriptions.py)."""

    messages: list[Message]
    latest_id: int


def _now_ms() -> int:
    return int(time.time() * 1000)


def _max_age_ms() -> int:
    return int(settings.REALTIME_HISTORY_MAX_AGE_SECONDS * 1000)


def _append_args(topic: Topic, body: str) -> tuple[list[str], list[Any]]:
    keys = [sequence_key(topic), history_key(topic), pubsub_channel(topic), STATS_PUBLISHED_KEY, PRIMARY_KEY]
    return keys, [_now_ms(), settings.REALTIME_HISTORY_MAX_LENGTH, _max_age_ms(), body, PRIMARY_CHECK_MS]


def history_append_many(client: redis.Redis, messages: list[tuple[Topic, str]]) -> list[int]:
    """Append messages (each `body` the JSON object of its topic, event and data) to their
    topics' histories and publish them, in one round trip (a pipeline of the script by its
    SHA, each append still atomic); return their ids in order.

    A Redis that restarted has forgotten the script: the appends it refused are sent
    again after loading it, and only those (any it ran went through once).
    """
    results: list[Any] = [None] * len(messages)
    todo = list(range(len(messages)))
    for _ in range(2):
        with client.pipeline(transaction=False) as pipe:
            for index in todo:
                keys, args = _append_args(*messages[index])
                pipe.evalsha(APPEND_SHA, len(keys), *keys, *args)
            answers = pipe.execute(raise_on_error=False)
        for index, answer in zip(todo, answers, strict=True):
            results[index] = answer
        todo = [index for index in todo if isinstance(results[index], NoScriptError)]
        if not todo:
            break
        client.script_load(APPEND_SCRIPT)
    for answer in results:
        if isinstance(answer, Exception):
            raise answer
    return [int(answer) for answer in results]


async def ahistory_append(client: aioredis.Redis, *, topic: Topic, body: str) -> int:
    keys, args = _append_args(topic, body)
    return int(await client.register_script(APPEND_SCRIPT)(keys=keys, args=args))


def history_decode(raw: bytes | str) -> Message:
    message: Message = json.loads(raw)
    return message


async def ahistory_since(client: aioredis.Redis, *, topic: Topic, last_id: int) -> HistoryRead:
    """The messages after `last_id` that the history still holds, in order, and the
    topic's latest id (read together, so they agree)."""
    async with client.pipeline(transaction=True) as pipe:
        pipe.get(sequence_key(topic))
        pipe.zrangebyscore(history_key(topic), f"({last_id}", "+inf")
        latest, raw = await pipe.execute()
    # Trimming by age happens on append: a topic nobody published to lately still has
    # messages past the age limit, which count as gone.
    oldest = _now_ms() - _max_age_ms()
    messages = [m for m in map(history_decode, raw) if m["ts"] >= oldest]
    return HistoryRead(messages, int(latest or 0))


async def ahistory_latest_id(client: aioredis.Redis, *, topic: Topic) -> int:
    return int(await client.get(sequence_key(topic)) or 0)


async def ahistory_latest_ids(client: aioredis.Redis, *, topics: list[Topic]) -> dict[Topic, int]:
    """The last id of each topic, in one round trip: 0 for a topic with no message yet, so
    resuming from it replays everything the topic ever had in its history."""
    values = await client.mget([sequence_key(topic) for topic in topics])
    return {topic: int(value or 0) for topic, value in zip(topics, values, strict=True)}


def history_trim_expired(client: redis.Redis, *, max_keys: int = 10_000) -> int:
    """Remove messages older than the history's age limit from every topic's history,
    looking at up to `max_keys` topics (SCAN, so Redis is never blocked); return how
    many messages went. Sequence keys stay: a topic never hands out an id twice."""
    removed = 0
    trim = client.register_script(TRIM_SCRIPT)
    for seen, key in enumerate(client.scan_iter(match=history_key_pattern(), count=500)):
        if seen >= max_keys:
            break
        removed += int(trim(keys=[key], args=[_now_ms(), _max_age_ms()]))
    if removed:
        logger.info("realtime history: %d messages past the age limit removed", removed)
    return removed
