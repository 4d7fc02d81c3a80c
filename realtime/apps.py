from django.apps import AppConfig


class RealtimeConfig(AppConfig):
    """Live notifications to browsers over WebSocket and Server-Sent Events."""

    name = "realtime"
    default_auto_field = "django.db.models.BigAutoField"
