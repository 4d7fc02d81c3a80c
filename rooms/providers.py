"""The chat platform's messaging API: send one message with its idempotency key, or ask
whether the platform holds one."""

import hashlib
import hmac
import logging
import threading
import time
from dataclasses import dataclass

import requests
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


_local = threading.local()


def _session() -> requests.Session:
    """This thread's session: its connections are kept alive between calls, and a
    session is not shared between threads (the shard owner sends from a pool of them).

    The proxy settings of the environment are read once, here: a session that trusts the
    environment reads them, and ~/.netrc, on every call, which was a fifth of a shard
    owner's CPU. The platform is called with no other credentials than its URL's."""
    session: requests.Session | None = getattr(_local, "session", None)
    if session is None:
        session = _local.session = requests.Session()
        session.proxies = requests.utils.get_environ_proxies(settings.ROOMS_CHAT_API_URL)
        session.trust_env = False
    return session


def _messages_url() -> str:
    return settings.ROOMS_CHAT_API_URL.rstrip("/") + "/chat/v1/messages"


def chat_send(
    *, room: str, body: str, idempotency_key: str, sequence: int, callback_url: str
) -> ChatSendResult:
    """Hand one message to the chat platform; a repeated idempotency key is not resent."""
    url = _messages_url()
    payload: dict[str, str | int] = {
        "room": room,
        "body": body,
        "idempotency_key": idempotency_key,
        "sequence": sequence,
        "callback_url": callback_url,
    }
    try:
        response = _session().post(url, json=payload, timeout=settings.ROOMS_CHAT_API_TIMEOUT_SECONDS)
    except requests.RequestException as exc:
        raise ProviderTransientError(f"chat platform unreachable at {url}: {exc}") from exc
    if response.status_code >= 500 or response.status_code == 429:
        raise ProviderTransientError(f"chat platform answered {response.status_code}", response=_reply(response))
    if response.status_code >= 400:
        raise ProviderPermanentError(f"chat platform refused the message ({response.status_code})",
                                     response=_reply(response))
    answer = response.json()
    return ChatSendResult(provider_message_id=str(answer["id"]), duplicate=bool(answer.get("duplicate")))


def chat_lookup(*, idempotency_key: str) -> str | None:
    """The platform's id of the message it holds under this key, or None if it has none."""
    url = _messages_url()
    try:
        response = _session().get(url, params={"idempotency_key": idempotency_key},
                                  timeout=settings.ROOMS_CHAT_API_TIMEOUT_SECONDS)
    except requests.RequestException as exc:
        raise ProviderTransientError(f"chat platform unreachable at {url}: {exc}") from exc
    if response.status_code == 404:
        return None
    if response.status_code != 200:
        raise ProviderTransientError(f"chat platform answered {response.status_code} to a lookup",
                                     response=_reply(response))
    return str(response.json()["id"])


def _reply(response: requests.Response) -> dict[str, int | str]:
    return {"status": response.status_code, "body": response.text[:500]}


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
