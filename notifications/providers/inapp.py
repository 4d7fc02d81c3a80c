"""In-app notifications: a Notification row per delivery (one, whatever the retries)."""

from datetime import datetime

from django.contrib.auth.models import AbstractBaseUser

from notifications.models import Delivery, Event, Notification
from notifications.providers.base import SendResult, render


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
    return SendResult(provider_message_id=f"notification:{notification.pk}", response={"created": created})
