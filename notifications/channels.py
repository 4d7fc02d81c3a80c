"""The channels a notification goes out on. Import-safe before Django's apps are ready
(config/celery.py builds the queue list from it)."""

from django.db.models import TextChoices


class Channel(TextChoices):
    EMAIL = "email"
    SMS = "sms"
    ANALYTICS = "analytics"
    INAPP = "inapp"


class Lane(TextChoices):
    """Which queues an event type's work rides. Bulk work (a broadcast to an audience)
    has its own queue per channel and its own workers, so a password reset never waits
    behind a hundred thousand newsletters."""

    TRANSACTIONAL = "transactional"
    BULK = "bulk"
