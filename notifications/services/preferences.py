"""A user's choices of what reaches them: channels per event category, digest frequency."""

from notifications.models import Preference, Recipient


def preference_set(*, user_id: int, category: str, channel: str, enabled: bool) -> Preference:
    """Turn one channel of one event category on or off for a user."""
    preference, _ = Preference.objects.update_or_create(
        user_id=user_id, category=category, channel=channel, defaults={"enabled": enabled}
    )
    return preference


def digest_frequency_set(*, user_id: int, frequency: str) -> str:
    """Choose how often the user gets a digest email: daily, weekly or off."""
    Recipient.objects.update_or_create(user_id=user_id, defaults={"digest_frequency": frequency})
    return frequency
