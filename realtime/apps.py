from django.apps import AppConfig


class RealtimeConfig(AppConfig):
    """Live notifications to browsers over WebSocket and Server-Sent Events."""

    name = "realtime"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from core.metrics import registry
        from realtime.metrics import RealtimeCollector

        registry.register(RealtimeCollector())
