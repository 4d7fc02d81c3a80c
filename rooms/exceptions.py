"""The rooms app's errors, rendered as the API's error body (core.errors)."""

from core.errors import ApplicationError


class RoomError(ApplicationError):
    code = "room_error"
    status = 400


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
