"""Analytics to Mixpanel with a deterministic $insert_id per delivery, so a retried or
replayed send is deduplicated by Mixpanel instead of counted twice."""

import uuid
from datetime import datetime

from django.contrib.auth.models import AbstractBaseUser
from mixpanel import MixpanelException

from notifications.exceptions import ProviderTransientError
from notifications.models import Delivery, Event
from notifications.providers.base import SendResult
from notifications.providers.mixpanel import shared_mixpanel_client

INSERT_ID_NAMESPACE = uuid.UUID("6f9a3c1e-2b1d-4c55-9a57-3c0f0b6a8d21")


def insert_id(delivery: Delivery) -> str:
    """Mixpanel's dedup key: at most 36 characters, the same on every attempt."""
    return str(uuid.uuid5(INSERT_ID_NAMESPACE, f"{delivery.event_id}/{delivery.subscriber}/{delivery.recipient}"))


def analytics_send(
    *, delivery: Delivery, event: Event, user: AbstractBaseUser, in_doubt_since: datetime | None
) -> SendResult:
    properties = {
        **event.data,
        "$insert_id": insert_id(delivery),
        "time": int(event.occurred_at.timestamp()),
        "event_id": str(event.id),
        "event_version": event.version,
    }
    try:
        shared_mixpanel_client().track(str(user.pk), event.type, properties)
    except MixpanelException as exc:
        # The mixpanel library retries connection errors itself and does not tell 4xx
        # from 5xx; a request it gave up on may be retried safely thanks to $insert_id.
        raise ProviderTransientError(f"Mixpanel: {exc}", in_doubt=True) from exc
    return SendResult(provider_message_id=properties["$insert_id"], response={"event": event.type})


