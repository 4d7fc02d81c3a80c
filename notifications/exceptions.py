"""The notifications app's exceptions: one hierarchy, caught by type at each boundary.

A provider's errors (ProviderTransientError, ProviderPermanentError) are core.errors',
shared with the rooms app; these are the notifications app's own.
"""

from core.errors import ApplicationError, IdempotencyKeyReusedError


class NotificationError(Exception):
    """Base of every error the notifications app raises on purpose."""


class InvalidEvent(NotificationError, ApplicationError):  # noqa: N818 - the name the brief and style guide use
    """An event that cannot be published: unknown type or version, or data not matching it.

    `detail` maps each offending field to its messages, as an API error's detail.
    """

    code = "invalid_event"


class IdempotencyKeyReused(NotificationError, IdempotencyKeyReusedError):  # noqa: N818 - named for its cause
    """An idempotency key this publisher already used for a different request."""


class DeadLettered(NotificationError):  # noqa: N818 - names what happened to the message
    """A message RabbitMQ dead-lettered (rejected, over its delivery limit, or expired)."""


class FailedJobStateError(NotificationError, ApplicationError):
    """A failed job cannot take that action: it was already replayed or discarded."""

    code = "invalid_state"
    status = 409


class BatchPending(NotificationError):  # noqa: N818 - a state, not a failure
    """Deliveries wait for their batch; run the task again in `retry_after` seconds."""

    def __init__(self, *, retry_after: int) -> None:
        super().__init__(f"waiting for a batch; again in {retry_after}s")
        self.retry_after = retry_after
