"""Analytics deliveries to Mixpanel, many events per request, each with a deterministic $insert_id
so a resent batch is deduplicated by Mixpanel instead of counted twice."""

import functools
import json
import uuid
from typing import Any

from django.conf import settings
from mixpanel import Consumer, MixpanelException

from core.errors import ProviderTransientError
from notifications.models import Delivery
from notifications.providers.mixpanel.client import mixpanel_consumer

INSERT_ID_NAMESPACE = uuid.UUID("6f9a3c1e-2b1d-4c55-9a57-3c0f0b6a8d21")


def insert_id(delivery: Delivery) -> str:
    """Mixpanel's dedup key: at most 36 characters, the same on every attempt."""
    return str(uuid.uuid5(INSERT_ID_NAMESPACE, f"{delivery.event_id}/{delivery.subscriber}/{delivery.recipient}"))


def _mixpanel_event(delivery: Delivery) -> dict[str, Any]:
    event = delivery.event
    return {
        "event": event.type,
        "properties": {
            **event.data,
            "token": settings.MIXPANEL_TOKEN,
            "distinct_id": delivery.recipient.removeprefix("user:"),
            "time": int(event.occurred_at.timestamp()),
            "$insert_id": insert_id(delivery),
            "event_id": str(event.id),
            "event_version": event.version,
            "mp_lib": "python",
        },
    }


@functools.cache
def _shared_consumer(token: str, base_url: str) -> Consumer:
    return mixpanel_consumer()  # type: ignore[return-value]


def analytics_send_batch(deliveries: list[Delivery]) -> None:
    """Send the deliveries' events to Mixpanel's /track in one request.

    One consumer per process (and settings) keeps its HTTP connection between batches.
    The mixpanel library retries connection errors itself and does not tell 4xx from
    5xx; a batch it gave up on is safe to resend thanks to $insert_id.
    """
    if not deliveries:
        return
    consumer = _shared_consumer(settings.MIXPANEL_TOKEN, settings.MIXPANEL_API_BASE_URL)
    try:
        consumer.send("events", json.dumps([_mixpanel_event(delivery) for delivery in deliveries]))
    except MixpanelException as exc:
        raise ProviderTransientError(f"Mixpanel: {exc}", in_doubt=True) from exc
