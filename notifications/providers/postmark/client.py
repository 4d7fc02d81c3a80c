"""Postmark's /email/batch, spoken by a small client of Carillon's own.

One request carries up to 500 whole messages, each with its own recipient, subject and
bodies, and Postmark answers each one: taken (its MessageID) or refused (an ErrorCode),
in order. That is what a broadcast chunk needs: every recipient's email rendered for them,
sent in one request, and only the refused ones failed. django-anymail batches only one
message to many recipients (the same content, or an ESP-stored template with merge
data), so Carillon talks to this endpoint itself. POSTMARK_API_BASE_URL aims it elsewhere
(the sandbox).
"""

import functools
from typing import Any

import requests
from django.conf import settings

from core.errors import ProviderError, ProviderPermanentError, ProviderTransientError
from notifications.providers.base import http_refusal

POSTMARK_API_ORIGIN = "https://api.postmarkapp.com"
MAX_BATCH_MESSAGES = 500
TIMEOUT_SECONDS = 30.0  # 500 messages are a few megabytes
# A 429 without a Retry-After still pauses email this long.
RATE_LIMITED_PAUSE_SECONDS = 1.0


def postmark_configured() -> bool:
    return bool(settings.POSTMARK_SERVER_TOKEN)


@functools.cache
def _session(base_url: str) -> requests.Session:
    """One per process (and base URL): the connection is kept between batches."""
    return requests.Session()


def postmark_send_batch(messages: list[dict[str, Any]]) -> list[str | ProviderError]:
    """Send the messages (Postmark's message objects, at most 500) in one request; answer
    each one's Postmark MessageID, or the ProviderPermanentError that refused it.

    Raises ProviderTransientError when Postmark took none of them and may later: with
    `retry_after` for a 429, in doubt when no answer came (it may have taken them; each
    message's Message-ID header keeps a resend one message in the mailbox). Raises
    ProviderPermanentError when it refused the whole request (a wrong server token, a
    request it cannot read): asking again would be refused again.
    """
    if not 0 < len(messages) <= MAX_BATCH_MESSAGES:
        raise ValueError(f"a Postmark batch carries 1 to {MAX_BATCH_MESSAGES} messages, not {len(messages)}")
    base = (settings.POSTMARK_API_BASE_URL or POSTMARK_API_ORIGIN).rstrip("/")
    try:
        response = _session(base).post(
            f"{base}/email/batch",
            json=messages,
            headers={"Accept": "application/json", "X-Postmark-Server-Token": settings.POSTMARK_SERVER_TOKEN},
            timeout=TIMEOUT_SECONDS,
        )
    except requests.RequestException as exc:
        raise ProviderTransientError(f"Postmark: {exc}", in_doubt=True) from exc
    try:
        answer: Any = response.json()
    except ValueError:
        answer = {"Message": response.text[:200]}
    status = response.status_code
    if status == 200 and isinstance(answer, list) and len(answer) == len(messages):
        return [_result(one) for one in answer]
    if status == 200:
        # Taken, but not answered message by message: whatever it sent, a resend with the
        # same Message-IDs stays one message each.
        raise ProviderTransientError(f"Postmark answered {len(answer) if isinstance(answer, list) else 'no'} results for "
                                     f"{len(messages)} messages", in_doubt=True)
    answer = answer if isinstance(answer, dict) else {"Message": str(answer)[:200]}
    error = f"Postmark {status} (ErrorCode {answer.get('ErrorCode')}): {answer.get('Message') or 'no reason given'}"
    raise http_refusal(status, response.headers, error, answer, pause_seconds=RATE_LIMITED_PAUSE_SECONDS)


def _result(one: Any) -> str | ProviderError:
    one = one if isinstance(one, dict) else {}
    if one.get("ErrorCode") == 0 and one.get("MessageID"):
        return str(one["MessageID"])
    return ProviderPermanentError(
        f"Postmark refused it (ErrorCode {one.get('ErrorCode')}): {one.get('Message') or 'no reason given'}",
        response={"answer": one},
    )
