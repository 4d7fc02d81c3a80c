"""Reads of the notifications app."""

from django.db.models import QuerySet

from notifications.channels import Channel
from notifications.events import event_types
from notifications.models import DigestFrequency, Notification, Preference, Recipient


def notification_list(*, user_id: int) -> QuerySet[Notification]:
    return Notification.objects.filter(user_id=user_id)


def notification_unread_count(*, user_id: int) -> int:
    return Notification.objects.filter(user_id=user_id, read_at__isnull=True).count()


def preference_enabled(*, user_id: int, category: str, channel: str) -> bool:
    """Whether a user takes a channel for a category (no row means yes)."""
    enabled = (
        Preference.objects.filter(user_id=user_id, category=category, channel=channel)
        .values_list("enabled", flat=True)
        .first()
    )
    return enabled is None or enabled


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
