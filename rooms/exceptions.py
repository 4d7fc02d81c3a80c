"""The rooms app's errors. API views turn them into {"error", "message", "detail"}."""

from typing import Any


class RoomError(Exception):
    code = "room_error"
    status = 400

    def __init__(self, message: str, *, detail: Any = None) -> None:
        super().__init__(message)
        self.message = message
        self.detail = detail


class RoomNotFoundError(RoomError):
    code = "room_not_found"
    status = 404


class InvalidWebhookError(RoomError):
    code = "invalid_signature"
    status = 403


class ProviderTransientError(RoomError):
    """The provider could not take the message now; try again."""

    code = "provider_unavailable"
    status = 503


class ProviderPermanentError(RoomError):
    """The provider refused the message; resending will not help."""

    code = "provider_rejected"
    status = 502
