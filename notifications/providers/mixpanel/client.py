"""Mixpanel's /import, spoken by a small client of Carillon's own.

/import, not /track: /track silently drops events older than five days (a delivery
retried that long, or an event published with an old `occurred_at`) and answers a batch
with one status, while /import in strict mode takes any age, validates each event, and
names the ones it refused while keeping the rest. The official library answers every
refusal with one exception and leaves the answer's headers out, so neither a 429's
Retry-After nor the refused events could be read. MIXPANEL_API_BASE_URL aims it
elsewhere (the sandbox).
"""

import functools
from typing import Any

import requests
from django.conf import settings

from core.errors import ProviderTransientError
from notifications.providers.base import http_refusal

MIXPANEL_API_ORIGIN = "https://api.mixpanel.com"
TIMEOUT_SECONDS = 10.0
# A 429 without a Retry-After still pauses analytics this long.
RATE_LIMITED_PAUSE_SECONDS = 1.0


@functools.cache
def _session(base_url: str) -> requests.Session:
    """One per process (and base URL): the connection is kept between batches."""
    return requests.Session()


def mixpanel_import(events: list[dict[str, Any]]) -> dict[int, str]:
    """Send the events to /import in one request (Mixpanel takes up to 2,000); answer
    those Mixpanel refused (their index in `events`) with its reason. The others are taken.

    Raises ProviderTransientError when Mixpanel took none of them and may take them later:
    with `retry_after` for a 429, in doubt when no answer came (it may have taken them;
    each event's $insert_id makes the resend harmless). Raises ProviderPermanentError when
    it refused the whole request (a wrong project secret, a body too large): asking again
    would be refused again.
    """
    base = (settings.MIXPANEL_API_BASE_URL or MIXPANEL_API_ORIGIN).rstrip("/")
    try:
        response = _session(base).post(
            f"{base}/import", params={"strict": "1"}, json=events, auth=(settings.MIXPANEL_API_SECRET, ""),
            timeout=TIMEOUT_SECONDS,
        )
    except requests.RequestException as exc:
        raise ProviderTransientError(f"Mixpanel: {exc}", in_doubt=True) from exc
    try:
        answer = response.json()
    except ValueError:
        answer = {"error": response.text[:200]}
    if not isinstance(answer, dict):
        answer = {"error": str(answer)[:200]}
    status = response.status_code
    if status == 200:
        return {}
    failed = answer.get("failed_records")
    if status == 400 and isinstance(failed, list) and failed:
        # Strict mode's partial success: every event not named here was imported.
        return _refused(events, failed)
    error = f"Mixpanel {status}: {answer.get('error') or answer.get('status') or 'no reason given'}"
    raise http_refusal(status, response.headers, error, answer, pause_seconds=RATE_LIMITED_PAUSE_SECONDS)


def _refused(events: list[dict[str, Any]], failed: list[Any]) -> dict[int, str]:
    """Strict mode's failed records by the index of the event each names (by its index,
    or else its $insert_id). A record that names no event of this batch refuses them all:
    nothing is taken to be sent that Mixpanel may have refused."""
    by_insert_id = {event["properties"].get("$insert_id"): index for index, event in enumerate(events)}
    refused: dict[int, str] = {}
    for record in failed:
        record = record if isinstance(record, dict) else {}
        index = record.get("index")
        if not (isinstance(index, int) and 0 <= index < len(events)):
            index = by_insert_id.get(record.get("insert_id") or record.get("$insert_id"))
        reason = f"Mixpanel refused {record.get('field') or 'the event'}: {record.get('message') or 'no reason given'}"
        if index is None:
            return dict.fromkeys(range(len(events)), reason)
        refused[index] = reason
    return refused
