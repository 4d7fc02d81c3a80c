"""The chat platform's messaging API: send one message with its idempotency key, or ask
whether the platform holds one."""

import hashlib
import hmac
import json
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit
from urllib.request import getproxies, proxy_bypass

import urllib3
from django.conf import settings

from core.errors import ProviderPermanentError, ProviderTransientError
from rooms.exceptions import InvalidWebhookError, WebhookTimestampError

logger = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-Chat-Signature"
TIMESTAMP_HEADER = "X-Chat-Timestamp"
# How far a webhook's signed timestamp may be from our clock. The signature covers the
# timestamp, so a captured ack can be replayed only within this window (Stripe's default);
# it also absorbs the clock skew between the platform and us, and its retry delays.
WEBHOOK_TOLERANCE_S = 300


@dataclass(frozen=True)
class ChatSendResult:
    provider_message_id: str
    duplicate: bool


# Connections kept open to the platform, shared by the shard owner's sending threads
# (one pool per platform URL: tests point it elsewhere). urllib3 rather than requests'
# sessions: a send is the owner's most frequent call, and requests' layers over urllib3
# (prepared requests, cookies, hooks, settings merged per call) took as much CPU again as
# the call itself: 0.92 against 0.44 ms a send on a keep-alive connection, and sending
# threads share the owner's interpreter lock with its loop.
_managers: dict[str, urllib3.PoolManager] = {}
_managers_lock = threading.Lock()
# Connections kept per pool: one per sending thread of a shard owner (rooms_owner's
# --send-threads default); more are opened when needed and closed after their call.
_KEPT_CONNECTIONS = 32


def _manager(url: str) -> urllib3.PoolManager:
    """The pool of connections to the platform at `url`, through the proxy the
    environment names for it (HTTP_PROXY, HTTPS_PROXY, NO_PROXY), read once."""
    manager = _managers.get(url)
    if manager is None:
        with _managers_lock:
            manager = _managers.get(url)
            if manager is None:
                parts = urlsplit(url)
                proxy = None if proxy_bypass(parts.netloc) else getproxies().get(parts.scheme)
                manager = urllib3.ProxyManager(proxy, maxsize=_KEPT_CONNECTIONS) if proxy \
                    else urllib3.PoolManager(maxsize=_KEPT_CONNECTIONS)
                _managers[url] = manager
    return manager


def _call(method: str, url: str, **kwargs: Any) -> urllib3.BaseHTTPResponse:
    """One request to the platform, not retried here (the owner retries with backoff);
    a platform that cannot be reached or does not answer in time is a transient error."""
    timeout = settings.ROOMS_CHAT_API_TIMEOUT_SECONDS
    try:
        return _manager(settings.ROOMS_CHAT_API_URL).request(
            method, url, timeout=urllib3.Timeout(connect=timeout, read=timeout), retries=False, **kwargs)
    except (urllib3.exceptions.HTTPError, OSError) as exc:
        raise ProviderTransientError(f"chat platform unreachable at {url}: {exc}") from exc


def _messages_url() -> str:
    return settings.ROOMS_CHAT_API_URL.rstrip("/") + "/chat/v1/messages"


def chat_send(
    *, room: str, body: str, idempotency_key: str, sequence: int, callback_url: str
) -> ChatSendResult:
    """Hand one message to the chat platform; a repeated idempotency key is not resent."""
    payload: dict[str, str | int] = {
        "room": room,
        "body": body,
        "idempotency_key": idempotency_key,
        "sequence": sequence,
        "callback_url": callback_url,
    }
    response = _call("POST", _messages_url(), json=payload)
    if response.status >= 500 or response.status == 429:
        raise ProviderTransientError(f"chat platform answered {response.status}", response=_reply(response))
    if response.status >= 400:
        raise ProviderPermanentError(f"chat platform refused the message ({response.status})",
                                     response=_reply(response))
    answer = _json(response)
    return ChatSendResult(provider_message_id=str(answer["id"]), duplicate=bool(answer.get("duplicate")))


def chat_lookup(*, idempotency_key: str) -> str | None:
    """The platform's id of the message it holds under this key, or None if it has none."""
    response = _call("GET", _messages_url(), fields={"idempotency_key": idempotency_key})
    if response.status == 404:
        return None
    if response.status != 200:
        raise ProviderTransientError(f"chat platform answered {response.status} to a lookup",
                                     response=_reply(response))
    return str(_json(response)["id"])


def _json(response: urllib3.BaseHTTPResponse) -> dict[str, Any]:
    try:
        answer = json.loads(response.data)
    except ValueError:
        answer = None
    if not isinstance(answer, dict) or "id" not in answer:
        raise ProviderTransientError("chat platform answered without a message id", response=_reply(response))
    return answer


def _reply(response: urllib3.BaseHTTPResponse) -> dict[str, int | str]:
    return {"status": response.status, "body": response.data[:500].decode(errors="replace")}


def chat_webhook_verify(*, body: bytes, signature: str, timestamp: str, now: float | None = None) -> None:
    """Check a webhook's `X-Chat-Signature` (sha256=<hex HMAC-SHA256 of "<timestamp>.<body>">)
    and that its `X-Chat-Timestamp` is within WEBHOOK_TOLERANCE_S of now; raise if not."""
    secret = settings.ROOMS_CHAT_WEBHOOK_SECRET
    # Unix seconds have 10 digits until 2286; the bound keeps int() cheap and in range.
    if not timestamp.isascii() or not timestamp.isdigit() or len(timestamp) > 12:
        raise WebhookTimestampError(
            f"send the unix time the webhook was signed at in {TIMESTAMP_HEADER}",
            detail={"header": TIMESTAMP_HEADER},
        )
    signed = timestamp.encode() + b"." + body
    expected = "sha256=" + hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()
    # An empty secret would let anyone sign: nothing verifies without one (production
    # settings refuse to start without it). Headers arrive decoded as latin-1, so compare
    # bytes: compare_digest refuses non-ASCII strings.
    if not secret or not hmac.compare_digest(expected.encode(), signature.encode(errors="replace")):
        logger.warning("chat webhook with a bad signature refused")
        raise InvalidWebhookError(
            f"the {SIGNATURE_HEADER} header does not match the timestamp and body: check that the "
            "webhook secret (ROOMS_CHAT_WEBHOOK_SECRET) is the one the platform signs with",
        )
    skew = abs((time.time() if now is None else now) - int(timestamp))
    if skew > WEBHOOK_TOLERANCE_S:
        logger.warning("chat webhook signed %d s away from now refused", skew)
        raise WebhookTimestampError(
            f"the webhook was signed {int(skew)} s away from now, more than {WEBHOOK_TOLERANCE_S} s: "
            "a replayed or much delayed webhook, or a clock out of sync",
            detail={"header": TIMESTAMP_HEADER, "tolerance_s": WEBHOOK_TOLERANCE_S},
        )
