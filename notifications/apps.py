from django.apps import AppConfig


class NotificationsConfig(AppConfig):
    """Domain events, their subscribers and deliveries to email, SMS, analytics, in-app."""

    name = "notifications"
    default_auto_field = "django.db.models.BigAutoField"
