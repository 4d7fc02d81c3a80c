"""In-app notifications: a Notification row per delivery (one, whatever the retries),
pushed live to the user's `user:<id>` topic."""

from redis.exceptions import RedisError

from core.errors import ProviderError, ProviderTransientError
from core.rows import rows_create
from notifications.models import Notification
from notifications.providers.base import SendItem, SendResult, renders_each
from notifications.selectors import notification_payloads
from realtime.services import realtime_publish_many
from realtime.topics import user_topic


def inapp_send(*, items: list[SendItem]) -> list[SendResult | ProviderError]:
    """Insert the deliveries' notifications together, whichever event each is of (a retry
    keeps the rows it made), and push them to their users in one round trip to Redis."""
    titles, bodies = renders_each("inapp", "title.txt", items), renders_each("inapp", "txt", items)
    notifications = rows_create(
        [
            Notification(
                delivery=item.delivery, user_id=item.user.pk, event=item.event, kind=item.event.type, title=title,
                body=body, data=item.event.data,
            )
            for item, title, body in zip(items, titles, bodies, strict=True)
        ],
        key=lambda notification: notification.delivery_id,
        stored=lambda: Notification.objects.filter(delivery__in=[item.delivery for item in items]),
    )
    # Pushed on every attempt that has not yet recorded the delivery as sent: an attempt
    # that died between the push and that record pushes again, and clients drop the
    # repeat by notification id (docs/realtime.md). Redis away: retry the deliveries, the
    # Notification rows are already there for the inbox API.
    payloads = notification_payloads(notifications)
    try:
        message_ids = realtime_publish_many(
            [(user_topic(n.user_id), "notification.created", payload) for n, payload in zip(notifications, payloads, strict=True)]
        )
    except RedisError as exc:
        return [ProviderTransientError(f"realtime push: {exc}") for _ in items]
    return [
        SendResult(provider_message_id=f"notification:{n.pk}", response={"realtime_id": message_id})
        for n, message_id in zip(notifications, message_ids, strict=True)
    ]
