from django.apps import AppConfig


class CoreConfig(AppConfig):
    """What every app shares: the API's error contract."""

    name = "core"
