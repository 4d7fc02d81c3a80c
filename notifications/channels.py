"""The channels a notification goes out on. Import-safe before Django's apps are ready
(config/celery.py builds the queue list from it)."""

from django.db.models import TextChoices


class Channel(TextChoices):
    EMAIL = "email"
    SMS = "sms"
    ANALYTICS = "analytics"
    INAPP = "inapp"
