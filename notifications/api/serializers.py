from typing import Any

from drf_spectacular.extensions import OpenApiSerializerFieldExtension
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from notifications.events import event_types
from notifications.models import Delivery, DigestFrequency, Event, FailedJob, Notification
from notifications.selectors import event_progress, notification_item


class EventTypeField(serializers.CharField):
    """The name of a declared event type; event_publish checks it and lists the known ones."""


class EventTypeFieldSchema(OpenApiSerializerFieldExtension):
    """Event types are an enum in the schema, read from the registry when it is generated."""

    target_class = EventTypeField

    def map_serializer_field(self, auto_schema: Any, direction: Any) -> dict[str, Any]:
        return {
            "type": "string",
            "enum": sorted({event_type.name for event_type in event_types()}),
            "description": "a declared event type",
        }


class EventPublishSerializer(serializers.Serializer[Any]):
    type = EventTypeField(max_length=100)
    version = serializers.IntegerField(required=False, min_value=1, help_text="default: the latest")
    data = serializers.JSONField(help_text="the event's data, checked against its type's schema")
    actor = serializers.CharField(max_length=200, required=False, allow_blank=True, default="")
    idempotency_key = serializers.CharField(max_length=200, required=False, allow_null=True, default=None)
    occurred_at = serializers.DateTimeField(required=False, allow_null=True, default=None)
    audience = serializers.JSONField(
        required=False, allow_null=True, default=None,
        help_text=(
            "whom the event is for, beyond its data's user_id: exactly one of "
            '{"users": [ids, at most 1000]}, {"audience": name, "params": {...}} (a declared audience), '
            '{"topic": key} (one of your topics). Required by bulk event types.'
        ),
    )


class EventAcceptedSerializer(serializers.Serializer[Any]):
    id = serializers.UUIDField()
    status_url = serializers.CharField()
    duplicate = serializers.BooleanField()


class DeliverySerializer(serializers.ModelSerializer[Delivery]):
    class Meta:
        model = Delivery
        fields = [
            "id", "subscriber", "channel", "recipient", "status", "attempts",
            "provider_message_id", "last_error", "sent_at", "updated_at",
        ]


# An event addressed to an audience may have a hundred thousand deliveries: the event
# shows the first ones and counts them all in `progress`.
EVENT_DELIVERIES_SHOWN = 100


class ChannelProgressSerializer(serializers.Serializer[Any]):
    recipients = serializers.IntegerField(help_text="recipients resolved so far")
    resolved = serializers.BooleanField(
        help_text="every recipient is resolved (an audience is read in pages); stays false for a broadcast "
        "cancelled before all were (see cancelled_at)"
    )
    pending = serializers.IntegerField()
    sending = serializers.IntegerField()
    sent = serializers.IntegerField()
    delivered = serializers.IntegerField()
    undelivered = serializers.IntegerField()
    failed = serializers.IntegerField()
    skipped = serializers.IntegerField(help_text="the recipient switched this channel off")
    cancelled = serializers.IntegerField(help_text="not sent: the event was cancelled")


class EventSerializer(serializers.ModelSerializer[Event]):
    deliveries = serializers.SerializerMethodField(
        help_text=f"the first {EVENT_DELIVERIES_SHOWN} deliveries, oldest first; progress counts them all"
    )
    published = serializers.SerializerMethodField()
    progress = serializers.SerializerMethodField()

    class Meta:
        model = Event
        fields = [
            "id", "type", "version", "occurred_at", "actor", "data", "audience", "idempotency_key", "published",
            "cancelled_at", "progress", "deliveries",
        ]

    def get_published(self, event: Event) -> bool:
        """Whether every outbox row of the event reached RabbitMQ."""
        return not event.outbox.filter(published_at__isnull=True).exists()

    @extend_schema_field(DeliverySerializer(many=True))
    def get_deliveries(self, event: Event) -> Any:
        return DeliverySerializer(event.deliveries.order_by("pk")[:EVENT_DELIVERIES_SHOWN], many=True).data

    @extend_schema_field(serializers.DictField(child=ChannelProgressSerializer()))
    def get_progress(self, event: Event) -> dict[str, Any]:
        """Per channel, the deliveries in each status."""
        return event_progress(event=event)


class NotificationSerializer(serializers.ModelSerializer[Notification]):
    """The fields document the schema; the representation is notification_item's, the one
    the live push sends too."""

    read = serializers.BooleanField(read_only=True)

    class Meta:
        model = Notification
        fields = ["id", "kind", "title", "body", "data", "read", "read_at", "created_at"]

    def to_representation(self, instance: Notification) -> dict[str, Any]:
        return dict(notification_item(instance))


class PreferenceSerializer(serializers.Serializer[Any]):
    category = serializers.CharField()
    channel = serializers.CharField()
    enabled = serializers.BooleanField()
    mandatory = serializers.BooleanField(read_only=True)


class DigestPreferenceSerializer(serializers.Serializer[Any]):
    frequency = serializers.ChoiceField(
        choices=DigestFrequency.choices,
        help_text="email a digest of unread in-app notifications: daily, weekly, or off",
    )


class FailedJobActionSerializer(serializers.Serializer[Any]):
    reason = serializers.CharField(
        required=False, allow_blank=True, default="", help_text="why the job is discarded (required to discard)"
    )


class FailedJobStateSerializer(serializers.Serializer[Any]):
    id = serializers.IntegerField()
    state = serializers.ChoiceField(choices=FailedJob.State.choices)
