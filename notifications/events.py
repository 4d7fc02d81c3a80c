"""Event types: a name, a version and a schema each, and the typed envelope they travel in."""

from dataclasses import dataclass
from typing import Any, TypedDict

from django.contrib.auth import get_user_model
from django.db import connection
from rest_framework import serializers
from rest_framework.fields import empty

from notifications.channels import Lane
from notifications.exceptions import InvalidEvent


class Envelope(TypedDict):
    """An event as it travels: stored, published to the events exchange, shown by the API."""

    id: str
    type: str
    version: int
    occurred_at: str
    actor: str
    data: dict[str, Any]
    idempotency_key: str | None


@dataclass(frozen=True)
class EventType:
    name: str
    version: int
    schema: type[serializers.Serializer[Any]]
    # Users choose channels per category (Preference); mandatory categories cannot be
    # switched off (a password reset must reach its user).
    category: str
    mandatory: bool = False
    description: str = ""
    # Bulk: the type's work rides the bulk queues (broadcasts, digests of news) and never
    # delays transactional types (a password reset) on the same channel.
    lane: Lane = Lane.TRANSACTIONAL


_REGISTRY: dict[str, dict[int, EventType]] = {}


def event_type_register(event_type: EventType) -> EventType:
    """Declare an event type; a second declaration of the same name and version is a bug."""
    versions = _REGISTRY.setdefault(event_type.name, {})
    if event_type.version in versions:
        raise ValueError(f"event type {event_type.name} v{event_type.version} is declared twice")
    versions[event_type.version] = event_type
    return event_type


def event_type_get(*, name: str, version: int | None = None) -> EventType:
    """Find a declared event type (its latest version by default) or raise InvalidEvent."""
    versions = _REGISTRY.get(name)
    if not versions:
        known = ", ".join(sorted(_REGISTRY))
        raise InvalidEvent(
            f"unknown event type {name!r}; declared types are: {known}",
            detail={"type": [f"unknown event type {name!r}"]},
        )
    if version is None:
        return versions[max(versions)]
    if version not in versions:
        raise InvalidEvent(
            f"event type {name!r} has no version {version}; versions: {sorted(versions)}",
            detail={"version": [f"{name} has versions {sorted(versions)}"]},
        )
    return versions[version]


def event_types() -> list[EventType]:
    return [event_type for versions in _REGISTRY.values() for event_type in versions.values()]


def event_data_validate(event_type: EventType, data: Any) -> dict[str, Any]:
    """Check data against the type's schema; return the cleaned data or raise InvalidEvent."""
    if not isinstance(data, dict):
        raise InvalidEvent("event data must be a JSON object", detail={"data": ["must be an object"]})
    schema = event_type.schema(data=data)
    if not schema.is_valid():
        fields = ", ".join(f"data.{name}" for name in schema.errors)
        raise InvalidEvent(
            f"{event_type.name} v{event_type.version}: invalid {fields}",
            detail={f"data.{name}": errors for name, errors in schema.errors.items()},
        )
    # Keep JSON-ready values (the validated_data may hold Decimals or datetimes).
    return dict(schema.to_representation(schema.validated_data))


class UserIdField(serializers.IntegerField):
    """A recipient: the id of a user that exists, checked when the event is published.

    Declare every recipient of an event type's schema with it. An event naming no real
    user would be accepted and then fail once per subscriber, each failure a failed job:
    whoever may publish could fill the failed-job list. Checked here, such an event is
    refused with the field named and nothing written.
    """

    default_error_messages = {"no_user": "no user with id {user_id}"}

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("min_value", 1)
        super().__init__(**kwargs)

    def run_validation(self, data: Any = empty) -> Any:
        value = super().run_validation(data)
        if value is None:
            return value
        users = get_user_model()
        # Past the id column's range the lookup itself would fail (SQLite overflows).
        _, highest = connection.ops.integer_field_range(users._meta.pk.get_internal_type())
        if highest is not None and value > highest:
            self.fail("max_value", max_value=highest)
        if not users.objects.filter(pk=value).exists():
            self.fail("no_user", user_id=value)
        return value


# --- Carillon's demo event types -------------------------------------------------------


class AccountCreated(serializers.Serializer[Any]):
    user_id = UserIdField()
    name = serializers.CharField(max_length=200, required=False, allow_blank=True)


class PasswordResetRequested(serializers.Serializer[Any]):
    user_id = UserIdField()
    reset_url = serializers.URLField(max_length=500)


class VideoLiked(serializers.Serializer[Any]):
    user_id = UserIdField(help_text="the video's owner, who is told")
    video_id = serializers.CharField(max_length=100)
    liked_by = serializers.CharField(max_length=200)


ACCOUNT_CREATED = event_type_register(
    EventType("account.created", 1, AccountCreated, category="account", description="A user signed up.")
)
PASSWORD_RESET_REQUESTED = event_type_register(
    EventType(
        "password.reset_requested", 1, PasswordResetRequested, category="security", mandatory=True,
        description="A user asked to reset their password.",
    )
)
class ProductAnnouncement(serializers.Serializer[Any]):
    title = serializers.CharField(max_length=200)
    body = serializers.CharField(max_length=5000)
    url = serializers.URLField(max_length=500, required=False)


PRODUCT_ANNOUNCEMENT = event_type_register(
    EventType(
        "product.announcement", 1, ProductAnnouncement, category="product", lane=Lane.BULK,
        description="News for many users at once: publish it with an audience (a list, a declared audience, a topic).",
    )
)
VIDEO_LIKED = event_type_register(
    EventType("video.liked", 1, VideoLiked, category="social", description="Someone liked a user's video.")
)
