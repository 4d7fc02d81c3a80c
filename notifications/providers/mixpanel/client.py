"""Mixpanel's /track, spoken by a small client of Carillon's own: the official library
answers every refusal with one exception and leaves the answer's headers out, so a 429's
Retry-After could not be honoured. MIXPANEL_API_BASE_URL aims it elsewhere (the sandbox)."""

import base64
import functools
import json
from typing import Any

import requests
from django.conf import settings

from core.errors import ProviderTransientError
from notifications.providers.base import retry_after_seconds

MIXPANEL_API_ORIGIN = "https://api.mixpanel.com"
TIMEOUT_SECONDS = 10.0
# A 429 without a Retry-After still pauses analytics this long.
RATE_LIMITED_PAUSE_SECONDS = 1.0


@functools.cache
def _session(base_url: str) -> requests.Session:
    """One per process (and base URL): the connection is kept between batches."""
    return requests.Session()


def mixpanel_track(events: list[dict[str, Any]]) -> None:
    """Send the events to /track in one request (Mixpanel takes up to 2,000).

    Raises ProviderTransientError when Mixpanel did not take them: with `retry_after` for a
    429, in doubt when no answer came (it may have taken them; each event's $insert_id
    makes the resend harmless).
    """
    base = (settings.MIXPANEL_API_BASE_URL or MIXPANEL_API_ORIGIN).rstrip("/")
    body = {"data": base64.b64encode(json.dumps(events).encode()).decode(), "verbose": "1", "ip": "0"}
    try:
        response = _session(base).post(f"{base}/track", data=body, timeout=TIMEOUT_SECONDS)
    except requests.RequestException as exc:
        raise ProviderTransientError(f"Mixpanel: {exc}", in_doubt=True) from exc
    try:
        answer = response.json()
    except ValueError:
        answer = {"error": response.text[:200]}
    if response.status_code == 429:
        asked = retry_after_seconds(response.headers.get("Retry-After"))
        raise ProviderTransientError(
            "Mixpanel 429: too many requests", response={"answer": answer}, retry_after=asked or RATE_LIMITED_PAUSE_SECONDS
        )
    if response.status_code != 200 or not isinstance(answer, dict) or answer.get("status") != 1:
        error = answer.get("error") if isinstance(answer, dict) else answer
        raise ProviderTransientError(f"Mixpanel {response.status_code}: {error}", response={"answer": answer})
