"""Reads of the notifications app."""

from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any, TypedDict

from django.db.models import Count, QuerySet
from django.utils import timezone

from notifications.channels import Channel
from notifications.events import event_types
from notifications.models import (
    Broadcast,
    Delivery,
    DigestFrequency,
    Event,
    Notification,
    Preference,
    Recipient,
    Topic,
)


def idempotency_scope(publisher_id: int | None) -> str:
    """Where a publisher's idempotency keys are unique: its own, or the project's ("")."""
    return f"user:{publisher_id}" if publisher_id is not None else ""


def event_for_key(*, publisher_id: int | None, key: str) -> Event | None:
    """The event a publisher already published with this idempotency key, if any."""
    return Event.objects.filter(idempotency_scope=idempotency_scope(publisher_id), idempotency_key=key).first()


def events_visible(*, user: Any) -> QuerySet[Event]:
    """The events `user` (a request's user) may read: those it published, or every one
    with notifications.view_event. An event's data may hold secrets (a reset URL)."""
    events = Event.objects.all()
    if not user.is_authenticated:  # its pk is None, which would match the project's events
        return events.none()
    if user.has_perm("notifications.view_event"):
        return events
    return events.filter(publisher_id=user.pk)


def notification_list(*, user_id: int) -> QuerySet[Notification]:
    return Notification.objects.filter(user_id=user_id)


def notification_unread_count(*, user_id: int) -> int:
    return Notification.objects.filter(user_id=user_id, read_at__isnull=True).count()


class NotificationItem(TypedDict):
    id: int
    kind: str
    title: str
    body: str
    data: Any
    read: bool
    read_at: str | None
    created_at: str


class NotificationPayload(TypedDict):
    notification: NotificationItem
    unread_count: int


def notification_item(notification: Notification) -> NotificationItem:
    """A notification as clients see it: an item of GET /api/notifications/ and the live
    push of a new one both are this, so an inbox and a live client never disagree."""
    return {
        "id": notification.pk,
        "kind": notification.kind,
        "title": notification.title,
        "body": notification.body,
        "data": notification.data,
        "read": notification.read_at is not None,
        "read_at": _api_datetime(notification.read_at) if notification.read_at else None,
        "created_at": _api_datetime(notification.created_at),
    }


def notification_payloads(notifications: list[Notification]) -> list[NotificationPayload]:
    """What a live client gets for each new notification: the item, and its user's unread
    count (counted for all the users in one query)."""
    users = {n.user_id for n in notifications}
    unread = dict(
        Notification.objects.filter(user_id__in=users, read_at__isnull=True)
        .values_list("user_id")
        .annotate(n=Count("id"))
        .order_by()
    )
    return [{"notification": notification_item(n), "unread_count": unread.get(n.user_id, 0)} for n in notifications]


def _api_datetime(value: datetime) -> str:
    """A datetime as the rest of the API writes it (DRF's ISO 8601): in the current time
    zone, UTC as "Z"."""
    text = timezone.localtime(value).isoformat()
    return text.removesuffix("+00:00") + "Z" if text.endswith("+00:00") else text


def preferences_disabled(*, user_ids: list[int], category: str, channel: str) -> set[int]:
    """Which of these users switched the channel off for the category (one query)."""
    return preferences_disabled_each({(category, channel): user_ids})[(category, channel)]


def preferences_disabled_each(asked: Mapping[tuple[str, str], Iterable[int]]) -> dict[tuple[str, str], set[int]]:
    """For each (category, channel), which of its users switched it off: one query for
    them all (a batch of an event's email, analytics and in-app asks three)."""
    users = {pair: set(user_ids) for pair, user_ids in asked.items()}
    off: dict[tuple[str, str], set[int]] = {pair: set() for pair in users}
    if not any(users.values()):
        return off
    rows = Preference.objects.filter(
        enabled=False, user_id__in=set().union(*users.values()),
        category__in={category for category, _ in users}, channel__in={channel for _, channel in users},
    )
    for user_id, category, channel in rows.values_list("user_id", "category", "channel"):
        if user_id in users.get((category, channel), ()):
            off[(category, channel)].add(user_id)
    return off


def preference_list(*, user_id: int) -> list[dict[str, object]]:
    """Every category and channel with the user's choice, mandatory ones marked."""
    categories = {event_type.category: event_type.mandatory for event_type in event_types()}
    chosen = {
        (row.category, row.channel): row.enabled for row in Preference.objects.filter(user_id=user_id)
    }
    return [
        {
            "category": category,
            "channel": channel,
            "enabled": mandatory or chosen.get((category, channel), True),
            "mandatory": mandatory,
        }
        for category, mandatory in sorted(categories.items())
        for channel in Channel.values
    ]


def digest_frequency_get(*, user_id: int) -> str:
    """The user's digest choice (off until they choose)."""
    frequency = Recipient.objects.filter(user_id=user_id).values_list("digest_frequency", flat=True).first()
    return frequency or DigestFrequency.OFF


def topic_get(*, scope: str, key: str) -> Topic | None:
    """A publisher's topic by key (`scope` as idempotency_scope gives it)."""
    return Topic.objects.filter(scope=scope, key=key).first()


def topics_of(*, scope: str) -> QuerySet[Topic]:
    """A publisher's topics with their subscriber counts, by key."""
    return Topic.objects.filter(scope=scope).annotate(subscriber_count=Count("subscriptions")).order_by("key")


def event_progress(*, event: Event) -> dict[str, dict[str, Any]]:
    """Per channel: how many deliveries are in each status, and for a broadcast how many
    recipients are resolved so far and whether all are. Two grouped queries."""
    progress: dict[str, dict[str, Any]] = {}
    broadcast_channels = set()
    for broadcast in Broadcast.objects.filter(event=event):
        broadcast_channels.add(broadcast.channel)
        entry = progress.setdefault(broadcast.channel, _progress_entry())
        entry["recipients"] += broadcast.recipients
        entry["resolved"] = entry["resolved"] and broadcast.planned_at is not None
    counts = Delivery.objects.filter(event=event).values_list("channel", "status").annotate(n=Count("id"))
    for channel, status, n in counts.order_by():
        entry = progress.setdefault(channel, _progress_entry())
        entry[status] += n
    for channel, entry in progress.items():
        if channel not in broadcast_channels:
            # Without an audience, an event's recipients are its deliveries.
            entry["recipients"] = sum(entry[status] for status in Delivery.Status.values)
    return progress


def _progress_entry() -> dict[str, Any]:
    return {"recipients": 0, "resolved": True, **{status: 0 for status in Delivery.Status.values}}
