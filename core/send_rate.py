"""Send rates shared by every worker: a token bucket per provider in Redis.

Providers limit how fast an account may send (Twilio per number, ESPs per second,
Mixpanel per project). Workers on several machines send for the same account, so the
bucket lives in Redis, refilled and taken by one Lua script on Redis's own clock (no
worker's clock decides). A provider that answers 429 anyway pauses the bucket for its
Retry-After: every worker waits, instead of each finding out by a failed request.

Redis is the non-critical store: when it cannot answer, sends go ahead unpaced (the
provider's own 429 still slows them) rather than stopping critical notifications.
"""

import logging
import math
import time
from dataclasses import dataclass
from functools import cache
from typing import Any, NoReturn

import redis
from django.conf import settings

from core.redis import redis_client

logger = logging.getLogger(__name__)

# A limiter that cannot answer must not hold a send up for long.
REDIS_TIMEOUT_SECONDS = 0.5

# KEYS[1] the bucket (tokens, refilled-at µs), KEYS[2] the pause set by a 429.
# ARGV: rate per second, capacity, tokens wanted. Answers 0 when taken, else the µs to
# wait before asking again (nothing taken).
_TAKE = """
local pause = redis.call('PTTL', KEYS[2])
if pause > 0 then return pause * 1000 end
local now = redis.call('TIME')
local now_us = tonumber(now[1]) * 1000000 + tonumber(now[2])
local rate, capacity, wanted = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local state = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens, at = tonumber(state[1]), tonumber(state[2])
if tokens == nil then tokens, at = capacity, now_us end
tokens = math.min(capacity, tokens + (now_us - at) * rate / 1000000)
local wait = 0
if tokens >= wanted then tokens = tokens - wanted
else wait = math.ceil((wanted - tokens) * 1000000 / rate) end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'at', now_us)
redis.call('PEXPIRE', KEYS[1], math.ceil(capacity * 1000 / rate) + 1000)
return wait
"""


@dataclass(frozen=True)
class SendRate:
    """At most `per_second` sends on average, `burst` at once."""

    per_second: float
    burst: float

    def __post_init__(self) -> None:
        if self.per_second <= 0 or self.burst < 1:
            raise ValueError(f"a send rate needs per_second > 0 and burst >= 1, not {self}")


def send_rate_configured(name: str) -> SendRate | None:
    """The rate CARILLON_SEND_RATES sets for `name`, a second's worth at once; None if unset."""
    per_second = settings.CARILLON_SEND_RATES.get(name)
    return SendRate(per_second=per_second, burst=max(1.0, per_second)) if per_second else None


class SendRateExceeded(Exception):  # noqa: N818 - a state the caller acts on, like Celery's Retry
    """No token within the wait allowed: `retry_after` seconds until one is likely."""

    def __init__(self, name: str, retry_after: float) -> None:
        super().__init__(f"{name}: over its send rate; again in {retry_after:.1f}s")
        self.retry_after = retry_after


@cache
def _redis(url: str) -> Any:
    return redis_client(url, socket_timeout=REDIS_TIMEOUT_SECONDS, socket_connect_timeout=REDIS_TIMEOUT_SECONDS)


def _keys(name: str) -> list[str]:
    # One hash slot for both keys (the braces), should the Redis ever be a cluster.
    return [f"carillon:send_rate:{{{name}}}:bucket", f"carillon:send_rate:{{{name}}}:paused"]


# The longest a sender sleeps for a token before it puts its work off instead.
MAX_WAIT_SECONDS = 5.0


def send_rate_take(*, name: str, rate: SendRate, count: int = 1, max_wait_seconds: float = MAX_WAIT_SECONDS) -> None:
    """Wait for `count` sends of `name` under `rate`, sleeping as the bucket says.

    Raises SendRateExceeded when that would take longer than `max_wait_seconds`: a worker
    does not sleep through a long pause; it reschedules its work for then.
    """
    script = _redis(settings.REDIS_URL).register_script(_TAKE)
    deadline = time.monotonic() + max_wait_seconds
    # More than a burst never fits in the bucket at once: take it a burst at a time.
    piece = math.floor(rate.burst)
    while count > 0:
        wanted = min(count, piece)
        try:
            wait = int(script(keys=_keys(name), args=[rate.per_second, rate.burst, wanted])) / 1_000_000
        except redis.RedisError as exc:
            logger.warning("send rate %s: Redis unavailable (%s); sending unpaced", name, exc)
            return
        if wait <= 0:
            count -= wanted
            continue
        if time.monotonic() + wait > deadline:
            raise SendRateExceeded(name, wait)
        time.sleep(wait)


def send_rate_pause(*, name: str, seconds: float) -> None:
    """Hold every worker's sends of `name` for `seconds` (a provider's Retry-After)."""
    try:
        client = _redis(settings.REDIS_URL)
        # Only lengthen a pause: a shorter Retry-After arriving later must not cut it.
        remaining = client.pttl(_keys(name)[1])
        if remaining < seconds * 1000:
            client.set(_keys(name)[1], 1, px=max(1, round(seconds * 1000)))
    except redis.RedisError as exc:
        logger.warning("send rate %s: Redis unavailable (%s); pause of %.1fs not shared", name, exc, seconds)


def send_rate_back_off(*, name: str, seconds: float) -> NoReturn:
    """The provider asked senders of `name` to wait `seconds` (a 429's Retry-After, an SMTP
    421): pause every paced sender (`send_rate_pause`) and put this work off by raising
    SendRateExceeded, which the task turns into a countdown, not a failure."""
    send_rate_pause(name=name, seconds=seconds)
    raise SendRateExceeded(name, seconds)
