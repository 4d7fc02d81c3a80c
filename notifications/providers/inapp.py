"""In-app notifications: a Notification row per delivery (one, whatever the retries),
pushed live to the user's `user:<id>` topic."""

from datetime import datetime

from django.contrib.auth.models import AbstractBaseUser
from redis.exceptions import RedisError

from core.errors import ProviderTransientError
from notifications.models import Delivery, Event, Notification
from notifications.providers.base import SendResult, render
from notifications.selectors import notification_payload
from realtime.services import realtime_publish
from realtime.topics import user_topic


def inapp_send(
    *, delivery: Delivery, event: Event, user: AbstractBaseUser, in_doubt_since: datetime | None
) -> SendResult:
    notification, created = Notification.objects.get_or_create(
        delivery=delivery,
        defaults={
            "user_id": user.pk,
            "event": event,
            "kind": event.type,
            "title": render("inapp", event, "title.txt", user),
            "body": render("inapp", event, "txt", user),
            "data": event.data,
        },
    )
    # Pushed on every attempt that has not yet recorded the delivery as sent: an attempt
    # that died between the push and that record pushes again, and clients drop the
    # repeat by notification id (docs/realtime.md). Redis away: retry the delivery, the
    # Notification row is already there for the inbox API.
    try:
        message_id = realtime_publish(
            topic=user_topic(user.pk),
            event="notification.created",
            data=notification_payload(notification),
        )
    except RedisError as exc:
        raise ProviderTransientError(f"realtime push: {exc}") from exc
    return SendResult(
        provider_message_id=f"notification:{notification.pk}",
        response={"created": created, "realtime_id": message_id},
    )

