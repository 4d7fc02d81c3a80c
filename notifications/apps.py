from importlib import import_module

from django.apps import AppConfig
from django.conf import settings


class NotificationsConfig(AppConfig):
    """Domain events, their subscribers and deliveries to email, SMS, analytics, in-app."""

    name = "notifications"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from core.metrics import registry
        from notifications.metrics import CarillonCollector
        from notifications.queues import notification_queues_declare

        notification_queues_declare()
        registry.register(CarillonCollector())
        # Subscribers and event types are declared at import: Carillon's own, then those
        # of any module named in CARILLON_SUBSCRIBER_MODULES (a project's own wiring).
        import_module("notifications.subscribers")
        for module in settings.CARILLON_SUBSCRIBER_MODULES:
            import_module(module)
