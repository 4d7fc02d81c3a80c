"""Analytics deliveries to Mixpanel, many events per request, each with a deterministic $insert_id
so a resent batch is deduplicated by Mixpanel instead of counted twice."""

import uuid
from typing import Any

from notifications.models import Delivery
from notifications.providers.mixpanel.client import mixpanel_import

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
            "distinct_id": delivery.recipient.removeprefix("user:"),
            "time": int(event.occurred_at.timestamp()),
            "$insert_id": insert_id(delivery),
            "event_id": str(event.id),
            "event_version": event.version,
        },
    }


def analytics_send_batch(deliveries: list[Delivery]) -> dict[int, str]:
    """Send the deliveries' events to Mixpanel's /import in one request; answer those it
    refused (delivery pk → reason), the others are taken. A batch refused whole or lost is
    safe to resend thanks to $insert_id (see `mixpanel_import` for what it raises)."""
    if not deliveries:
        return {}
    refused = mixpanel_import([_mixpanel_event(delivery) for delivery in deliveries])
    return {deliveries[index].pk: reason for index, reason in refused.items()}
