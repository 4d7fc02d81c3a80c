"""Sending deliveries: one subscriber's work for one event, a Delivery row per recipient,
each handed to its channel's provider once."""

import logging
from datetime import datetime
from typing import Any

from django.db.models import F, Q
from django.utils import timezone

from core.errors import ProviderPermanentError, ProviderTransientError
from notifications.events import event_type_get
from notifications.models import Delivery, Event
from notifications.providers.senders import BATCH_SENDERS, SENDERS
from notifications.selectors import preference_enabled
from notifications.services.delivery_status import FINAL_STATUSES, delivery_mark_sent
from notifications.subscribers import subscriber_get

logger = logging.getLogger(__name__)


def delivery_send(*, event_id: str, subscriber_name: str, waited: bool = False) -> list[Delivery]:
    """Do one subscriber's work for one event: one Delivery per recipient, each sent once.

    Safe to run again for the same event and subscriber (a redelivered or retried
    message): finished deliveries are left alone, and one whose earlier attempt died
    mid-send is checked with the provider, or resent with the same idempotency key.
    Raises ProviderTransientError (retry), ProviderPermanentError (give up), or, for a
    channel sent in batches, BatchPending (run again later: the deliveries wait for their
    batch).
    `waited` says this run was already put off once for a batch.
    """
    event = Event.objects.get(pk=event_id)
    subscriber = subscriber_get(subscriber_name)
    event_type = event_type_get(name=event.type, version=event.version)
    deliveries, to_send = [], []
    for user in subscriber.recipients(event):
        delivery, _ = Delivery.objects.get_or_create(
            event=event,
            subscriber=subscriber.name,
            recipient=f"user:{user.pk}",
            defaults={"channel": subscriber.channel, "user_id": user.pk},
        )
        deliveries.append(delivery)
        if delivery.status in FINAL_STATUSES:
            continue
        if not event_type.mandatory and not preference_enabled(
            user_id=user.pk, category=event_type.category, channel=subscriber.channel
        ):
            Delivery.objects.filter(pk=delivery.pk).update(
                status=Delivery.Status.SKIPPED, last_error=f"{subscriber.channel} is off for {event_type.category}"
            )
            continue
        to_send.append((delivery, user))
    if subscriber.channel in BATCH_SENDERS:
        BATCH_SENDERS[subscriber.channel]([delivery for delivery, _ in to_send], waited=waited)
    else:
        for delivery, user in to_send:
            _delivery_attempt(delivery=delivery, event=event, user=user, channel=subscriber.channel)
    return deliveries


def _delivery_attempt(*, delivery: Delivery, event: Event, user: Any, channel: str) -> None:
    in_doubt_since = _delivery_begin_attempt(delivery)
    try:
        result = SENDERS[channel](delivery=delivery, event=event, user=user, in_doubt_since=in_doubt_since)
    except ProviderTransientError as exc:
        # Certainly not taken: back to pending. Perhaps taken: stay "sending", so the
        # next attempt checks with the provider first.
        status = Delivery.Status.SENDING if exc.in_doubt else Delivery.Status.PENDING
        Delivery.objects.filter(pk=delivery.pk).update(
            status=status, last_error=str(exc), provider_response=exc.response
        )
        raise
    except ProviderPermanentError as exc:
        Delivery.objects.filter(pk=delivery.pk).update(
            status=Delivery.Status.FAILED, last_error=str(exc), provider_response=exc.response
        )
        raise
    delivery_mark_sent(Q(pk=delivery.pk), provider_message_id=result.provider_message_id, response=result.response)
    logger.info("delivery %s of event %s: %s sent", delivery.pk, event.id, channel)


def _delivery_begin_attempt(delivery: Delivery) -> datetime | None:
    """Mark an attempt under way; return when the previous one began if it may have
    reached the provider (it died, or timed out, while "sending"). `delivery` is fresh
    from the database."""
    in_doubt_since = delivery.attempt_started_at if delivery.status == Delivery.Status.SENDING else None
    Delivery.objects.filter(pk=delivery.pk).update(
        status=Delivery.Status.SENDING, attempts=F("attempts") + 1, attempt_started_at=timezone.now()
    )
    return in_doubt_since
