"""The chat platform's messaging API: send one message with its idempotency key."""

import hashlib
import hmac
import logging
from dataclasses import dataclass

import requests
from django.conf import settings

from rooms.exceptions import ProviderPermanentError, ProviderTransientError

logger = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-Chat-Signature"


@dataclass(frozen=True)
class ChatSendResult:
    provider_message_id: str
    duplicate: bool


_session = requests.Session()


def chat_send(
    *, room: str, body: str, idempotency_key: str, sequence: int, callback_url: str
) -> ChatSendResult:
    """Hand one message to the chat platform; a repeated idempotency key is not resent."""
    url = settings.ROOMS_CHAT_API_URL.rstrip("/") + "/chat/v1/messages"
    payload: dict[str, str | int] = {
        "room": room,
        "body": body,
        "idempotency_key": idempotency_key,
        "sequence": sequence,
        "callback_url": callback_url,
    }
    try:
        response = _session.post(url, json=payload, timeout=settings.ROOMS_CHAT_API_TIMEOUT_S)
    except requests.RequestException as exc:
        raise ProviderTransientError(f"chat platform unreachable at {url}: {exc}") from exc
    if response.status_code >= 500 or response.status_code == 429:
        raise ProviderTransientError(f"chat platform answered {response.status_code}", detail=response.text[:500])
    if response.status_code >= 400:
        raise ProviderPermanentError(f"chat platform refused the message ({response.status_code})",
                                     detail=response.text[:500])
    answer = response.json()
    return ChatSendResult(provider_message_id=str(answer["id"]), duplicate=bool(answer.get("duplicate")))


def chat_signature_valid(*, body: bytes, signature: str) -> bool:
    """Check a webhook's `X-Chat-Signature` (sha256=<hex HMAC-SHA256 of the raw body>)."""
    secret = settings.ROOMS_CHAT_WEBHOOK_SECRET.encode()
    expected = "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, signature)
