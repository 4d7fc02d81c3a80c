"""The rooms app's errors, rendered as the API's error body (core.errors). The chat
platform's errors are core.errors' provider errors, shared with the notifications app."""

from core.errors import ApplicationError


class RoomError(ApplicationError):
    code = "room_error"
    status = 400


class InvalidRequestError(RoomError):
    """A request body that does not say what the endpoint needs; `detail` names the fields."""

    code = "invalid_request"
    status = 400


class RoomNotFoundError(RoomError):
    code = "room_not_found"
    status = 404


class RoomPermissionError(RoomError):
    """The caller may see the room but not do this to it."""

    code = "permission_denied"
    status = 403


class InvalidWebhookError(RoomError):
    code = "invalid_signature"
    status = 403


class WebhookTimestampError(RoomError):
    """A webhook without a signed timestamp, or signed too long ago (a replay)."""

    code = "invalid_timestamp"
    status = 403


class OwnerUnreachableError(RoomError):
    """An input for a shard owner that RabbitMQ did not take: nothing was done, try again."""

    code = "owner_unreachable"
    status = 503
