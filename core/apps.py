from django.apps import AppConfig


class CoreConfig(AppConfig):
    """What every app shares: the API's error contract, rate limits, security headers."""

    name = "core"

    def ready(self) -> None:
        from core import throttling  # noqa: F401 - connects the sign-in failure counter
