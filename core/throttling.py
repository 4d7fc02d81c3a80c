"""Rate limits shared by every web process: fixed-window counters in Redis.

Several daphne processes serve behind one proxy, so a counter kept in a process would let
an attacker spread guesses over them: each counter is one Redis key, incremented and
given its window's expiry by one Lua script (atomic, one round trip).

What is limited, and by whose count:
- sign-in failures (the admin's and /live/'s login): per username and per client address;
  a locked-out pair is refused before the password is even checked, so the right password
  after N wrong ones does not sign in either;
- credentials that fail (a request carrying `Authorization` answered 401): per client
  address, so guessing API tokens or the metrics token is slowed whatever the URL;
- the publish APIs and the realtime token API: per caller (its credential, its session
  user, else its address);
- provider webhooks that fail their signature: per client address. A webhook its
  provider signed is never counted: a chat platform acking a thousand messages a second
  from one address is the load ordered delivery is for, and counting it would cost each
  ack a Redis round trip to protect nothing the signature does not already refuse.

Views are picked by URL name (CARILLON_THROTTLE_VIEWS), not by path, and rates are
settings (CARILLON_THROTTLE_RATES; docs/operations.md, "Rate limits").
"""

import hashlib
import logging
import math
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import cache
from typing import Any

import redis
from asgiref.sync import iscoroutinefunction, markcoroutinefunction, sync_to_async
from django.conf import settings
from django.contrib.auth.signals import user_login_failed
from django.core.exceptions import ImproperlyConfigured
from django.dispatch import receiver
from django.http import HttpRequest, HttpResponse
from django.urls import Resolver404, resolve

from core.errors import error_response
from core.redis import redis_client

logger = logging.getLogger(__name__)

# The scopes that count failures rather than requests: a request is refused once the
# failures reach the limit, and only a failure adds to the count.
LOGIN_USERNAME = "login_username"
LOGIN_ADDRESS = "login_address"
CREDENTIAL_FAILURES = "credential_failures"
# The scope CARILLON_THROTTLE_VIEWS gives a sign-in view.
LOGIN = "login"
# The scope of provider webhooks: it counts the ones refused for their signature (403), and
# answers those 429 instead once their address is over the limit.
WEBHOOK = "webhook"

# A limiter that cannot answer must not hold a request up for long.
REDIS_TIMEOUT_SECONDS = 0.5

# Add ARGV[1] to the counter (0: only read it), start its window of ARGV[2] ms at its first
# count, answer the count and the ms left. Reading creates nothing: a window starts at the
# first request or failure counted, not at the first look.
_COUNT = """
local count = 0
if ARGV[1] == '0' then
  count = tonumber(redis.call('GET', KEYS[1]) or '0')
else
  count = redis.call('INCRBY', KEYS[1], ARGV[1])
  if redis.call('PTTL', KEYS[1]) < 0 then redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
end
return {count, redis.call('PTTL', KEYS[1])}
"""

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_RATE = re.compile(r"^(?P<limit>\d+)/(?P<number>\d*)(?P<unit>[smhd])$")


@dataclass(frozen=True)
class Rate:
    limit: int
    window_seconds: int


@cache
def rate_parse(text: str) -> Rate:
    """'5/15m' is 5 per 15 minutes; units s, m, h, d."""
    match = _RATE.match(text.strip())
    if match is None or int(match["limit"]) < 1:
        raise ImproperlyConfigured(
            f"rate {text!r} is not COUNT/[N]UNIT with COUNT >= 1 and UNIT one of s, m, h, d (e.g. 5/15m)"
        )
    return Rate(int(match["limit"]), int(match["number"] or 1) * _UNITS[match["unit"]])


def _rate(scope: str) -> Rate:
    return rate_parse(settings.CARILLON_THROTTLE_RATES[scope])


@cache
def _script(url: str) -> Any:
    client = redis_client(
        url, socket_timeout=REDIS_TIMEOUT_SECONDS, socket_connect_timeout=REDIS_TIMEOUT_SECONDS
    )
    return client.register_script(_COUNT)  # EVALSHA: the script is sent once per server


def _count(scope: str, identity: str, *, add: int) -> tuple[int, int]:
    """Add to a counter; answer its count and the seconds left in its window."""
    rate = _rate(scope)
    key = f"carillon:throttle:{scope}:{identity}"
    count, ttl_ms = _script(settings.CARILLON_THROTTLE_REDIS_URL)(
        keys=[key], args=[add, rate.window_seconds * 1000]
    )
    return int(count), max(1, math.ceil(int(ttl_ms) / 1000))


def throttle_hit(*, scope: str, identity: str) -> int | None:
    """Count one request; answer the seconds to wait when it is over the limit, else None."""
    count, retry_after = _count(scope, identity, add=1)
    return retry_after if count > _rate(scope).limit else None


def throttle_locked(*, scope: str, identity: str) -> int | None:
    """The seconds a failure scope stays locked for `identity`, None when it is not locked."""
    count, retry_after = _count(scope, identity, add=0)
    return retry_after if count >= _rate(scope).limit else None


def throttle_failure(*, scope: str, identity: str) -> None:
    """Count one failure (a wrong password, a credential refused)."""
    try:
        _count(scope, identity, add=1)
    except redis.RedisError:
        logger.warning("rate limiter unreachable: %s failure for %s not counted", scope, identity)


def client_address(request: HttpRequest) -> str:
    """The caller's address: REMOTE_ADDR, or the one CARILLON_TRUSTED_PROXIES proxies saw.

    Each trusted proxy appends the address it received from to X-Forwarded-For, so the
    entry that many places from the right is the last one no client could forge.
    """
    proxies = settings.CARILLON_TRUSTED_PROXIES
    forwarded = [part.strip() for part in request.META.get("HTTP_X_FORWARDED_FOR", "").split(",") if part.strip()]
    if proxies and len(forwarded) >= proxies:
        return forwarded[-proxies]
    return str(request.META.get("REMOTE_ADDR", "unknown"))


def _digest(text: str) -> str:
    # Keys hold digests: never a credential or a username in clear in Redis.
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def _caller(request: HttpRequest) -> str:
    """Whom a request rate counts against: its credential, its session user, its address."""
    credential = request.headers.get("Authorization", "")
    if credential:
        return "credential:" + _digest(credential)
    user = getattr(request, "user", None)
    if user is not None and user.is_authenticated:
        return f"user:{user.pk}"
    return "address:" + client_address(request)


def rate_limited_response(retry_after: int, message: str) -> HttpResponse:
    return error_response(
        "rate_limited",
        f"{message}: try again in {retry_after} seconds",
        detail={"retry_after": retry_after},
        status=429,
        headers={"Retry-After": str(retry_after)},
    )


def _login_refusal(request: HttpRequest) -> HttpResponse | None:
    username = str(request.POST.get("username", ""))
    try:
        retry_after = max(
            throttle_locked(scope=LOGIN_USERNAME, identity=_digest(username)) or 0,
            throttle_locked(scope=LOGIN_ADDRESS, identity=client_address(request)) or 0,
        )
    except redis.RedisError:
        # Closed for sign-ins: without the counters nothing would stop a password-guessing
        # run, and a sign-in can wait for Redis, unlike a publisher's traffic.
        logger.warning("rate limiter unreachable: sign-in refused for %s", client_address(request))
        return error_response(
            "login_unavailable",
            "signing in is unavailable for a moment (the rate limiter cannot be reached): try again shortly",
            status=503,
            headers={"Retry-After": "30"},
        )
    if retry_after:
        return rate_limited_response(retry_after, "too many failed sign-ins for this username or from this address")
    return None


def request_refusal(request: HttpRequest, scope: str | None) -> HttpResponse | None:
    """The answer that refuses `request`, or None to let it through."""
    if scope == LOGIN:
        return _login_refusal(request) if request.method == "POST" else None
    try:
        if request.headers.get("Authorization"):
            retry_after = throttle_locked(scope=CREDENTIAL_FAILURES, identity=client_address(request))
            if retry_after:
                return rate_limited_response(retry_after, "too many refused credentials from this address")
        if scope is not None and scope != WEBHOOK:
            retry_after = throttle_hit(scope=scope, identity=_caller(request))
            if retry_after:
                return rate_limited_response(retry_after, f"too many {scope.replace('_', ' ')} requests")
    except redis.RedisError:
        # Open for everything else: publishers and provider webhooks are authenticated or
        # signed, and losing their traffic while Redis restarts costs more than a few
        # minutes without a limit. The warning says the limits are off.
        logger.warning("rate limiter unreachable: %s let through unlimited", request.path)
    return None


def _scope(request: HttpRequest) -> str | None:
    try:
        view_name = resolve(request.path_info).view_name
    except Resolver404:
        return None
    return settings.CARILLON_THROTTLE_VIEWS.get(view_name)


def throttle_record(request: HttpRequest, scope: str | None, response: HttpResponse) -> HttpResponse:
    """Count the failure `response` reports, if any; answer what goes back to the caller."""
    # A 401 to a request that presented a credential means the credential was refused.
    if response.status_code == 401 and request.headers.get("Authorization"):
        throttle_failure(scope=CREDENTIAL_FAILURES, identity=client_address(request))
    if scope == WEBHOOK and response.status_code == 403:
        try:
            retry_after = throttle_hit(scope=WEBHOOK, identity=client_address(request))
        except redis.RedisError:
            logger.warning("rate limiter unreachable: refused webhook from %s not counted", client_address(request))
            return response
        if retry_after:
            return rate_limited_response(retry_after, "too many webhooks with a wrong signature from this address")
    return response


class ThrottleMiddleware:
    """Refuse with 429 (Retry-After) what is over its rate; count refused credentials.

    Sync and async: the SSE endpoint is an async view, and a sync middleware would move
    each of its requests to a thread for nothing (only throttled views reach Redis).
    """

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Callable[[HttpRequest], Any]) -> None:
        self.get_response = get_response
        for text in settings.CARILLON_THROTTLE_RATES.values():
            rate_parse(text)  # a mistyped rate stops start-up, not a request
        if iscoroutinefunction(get_response):
            markcoroutinefunction(self)

    def __call__(self, request: HttpRequest) -> Any:
        if iscoroutinefunction(self):
            return self.__acall__(request)
        scope = _scope(request)
        if scope is None and not request.headers.get("Authorization"):
            return self.get_response(request)
        refusal = request_refusal(request, scope)
        if refusal is not None:
            return refusal
        return throttle_record(request, scope, self.get_response(request))

    async def __acall__(self, request: HttpRequest) -> HttpResponse:
        get_response: Callable[[HttpRequest], Awaitable[HttpResponse]] = self.get_response
        scope = _scope(request)
        if scope is None and not request.headers.get("Authorization"):
            return await get_response(request)
        refusal = await sync_to_async(request_refusal)(request, scope)
        if refusal is not None:
            return refusal
        response = await get_response(request)
        return await sync_to_async(throttle_record)(request, scope, response)


@receiver(user_login_failed)
def _count_login_failure(sender: object, credentials: dict[str, Any], request: HttpRequest | None = None, **kwargs: Any) -> None:
    """Django sends this for every wrong password given to authenticate(), whatever the form."""
    if request is None:
        return
    throttle_failure(scope=LOGIN_USERNAME, identity=_digest(str(credentials.get("username", ""))))
    throttle_failure(scope=LOGIN_ADDRESS, identity=client_address(request))
