"""The realtime app's errors: each carries a short code for API bodies and error frames."""

from core.errors import ApplicationError


class RealtimeError(ApplicationError):
    """Base of every realtime error; `code` is what clients see."""

    code = "realtime_error"


class InvalidTopic(RealtimeError):  # noqa: N818 (STYLE names errors like InvalidEvent)
    code = "invalid_topic"


class TopicRefused(RealtimeError):  # noqa: N818 (STYLE names errors like InvalidEvent)
    code = "topic_refused"
    status = 403


class InvalidFrame(RealtimeError):  # noqa: N818 (STYLE names errors like InvalidEvent)
    code = "invalid_frame"


class InvalidToken(RealtimeError):  # noqa: N818 (STYLE names errors like InvalidEvent)
    code = "invalid_token"
    status = 401


class InvalidMessage(RealtimeError):  # noqa: N818 (STYLE names errors like InvalidEvent)
    code = "invalid_request"


class MessageTooLarge(RealtimeError):  # noqa: N818 (STYLE names errors like InvalidEvent)
    code = "payload_too_large"
    status = 413
