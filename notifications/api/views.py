"""The notifications API: publish events and follow them, read in-app notifications,
choose channels. Views validate, call one service or selector, and answer."""

import logging
from typing import Any

from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.db.models import QuerySet
from django.shortcuts import get_object_or_404
from drf_spectacular.utils import extend_schema, inline_serializer
from rest_framework import exceptions, generics, permissions, serializers
from rest_framework.fields import IntegerField
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from core.errors import error_response
from core.schema import error
from notifications.api.serializers import (
    DigestPreferenceSerializer,
    EventAcceptedSerializer,
    EventPublishSerializer,
    EventSerializer,
    FailedJobActionSerializer,
    FailedJobStateSerializer,
    NotificationSerializer,
    PreferenceSerializer,
)
from notifications.events import event_types
from notifications.models import Event, FailedJob, Notification
from notifications.selectors import (
    digest_frequency_get,
    event_for_key,
    events_visible,
    notification_list,
    notification_unread_count,
    preference_list,
)
from notifications.services.broadcasts import event_cancel
from notifications.services.events import event_publish
from notifications.services.failed_jobs import failed_job_discard, failed_job_replay
from notifications.services.inbox import notification_mark_read
from notifications.services.preferences import digest_frequency_set, preference_set

logger = logging.getLogger(__name__)


class CanPublishEvents(permissions.BasePermission):
    message = "publishing events needs the notifications.publish_event permission"

    def has_permission(self, request: Request, view: APIView) -> bool:
        return bool(request.user and request.user.has_perm("notifications.publish_event"))


def _too_large(request: Request) -> bool:
    """Measure the body actually read (Content-Length may lie, or be absent when chunked);
    Django refuses to read one past DATA_UPLOAD_MAX_MEMORY_SIZE at all."""
    try:
        return len(request.body) > settings.CARILLON_MAX_EVENT_BYTES
    except RequestDataTooBig:
        return True


class EventListView(APIView):
    permission_classes = [permissions.IsAuthenticated, CanPublishEvents]

    @extend_schema(
        request=EventPublishSerializer,
        responses={
            202: EventAcceptedSerializer,
            200: EventAcceptedSerializer,
            400: error(
                "the body is invalid (`invalid_request`) or the data does not fit the type (`invalid_event`: "
                "unknown type, bad data, a recipient user that does not exist)"
            ),
            409: error("`idempotency_key_reused`: this key was used for another request"),
            413: error("the body is larger than CARILLON_MAX_EVENT_BYTES (`payload_too_large`)"),
        },
        summary="Publish a domain event",
        description=(
            "Validates the event against its type's schema (recipients included: a user_id must name "
            "an existing user) and publishes it to every subscriber. "
            f"Bodies over CARILLON_MAX_EVENT_BYTES (default {64 * 1024} bytes) get 413. "
            "idempotency_key is unique per publisher: repeating a request with it answers 200 with the "
            "first event and publishes nothing; the same key with a different request answers 409."
        ),
    )
    def post(self, request: Request) -> Response:
        if _too_large(request):
            return error_response(
                "payload_too_large",
                f"an event body may be at most {settings.CARILLON_MAX_EVENT_BYTES} bytes",
                detail={"limit": settings.CARILLON_MAX_EVENT_BYTES},
                status=413,
            )
        incoming = EventPublishSerializer(data=request.data)
        incoming.is_valid(raise_exception=True)
        fields: dict[str, Any] = incoming.validated_data
        key = fields["idempotency_key"]
        first = event_for_key(publisher_id=request.user.pk, key=key) if key else None
        event = event_publish(
            type=fields["type"],
            data=fields["data"],
            version=fields.get("version"),
            actor=fields["actor"] or request.user.get_username(),
            idempotency_key=key,
            occurred_at=fields["occurred_at"],
            publisher_id=request.user.pk,
            audience=fields["audience"],
        )
        duplicate = first is not None and first.pk == event.pk
        answer = {"id": event.pk, "status_url": f"/api/events/{event.pk}/", "duplicate": duplicate}
        return Response(EventAcceptedSerializer(answer).data, status=200 if duplicate else 202)


class EventDetailView(generics.RetrieveAPIView[Event]):
    """An event with each delivery's state: a publisher learns when its work is done.

    Only its publisher, or an operator with notifications.view_event, reads it (its data
    may hold secrets such as a reset URL); anyone else gets 404, as for no such event.
    """

    permission_classes = [permissions.IsAuthenticated]
    serializer_class = EventSerializer

    def get_queryset(self) -> QuerySet[Event]:
        return events_visible(user=self.request.user)


class EventCancelledSerializer(serializers.Serializer[Any]):
    id = serializers.UUIDField()
    cancelled_at = serializers.DateTimeField()
    cancelled = serializers.IntegerField(help_text="pending deliveries this request cancelled")


class EventCancelView(APIView):
    """Cancel what an event has not sent yet: a broadcast stops where it is.

    Its publisher may cancel it, and an operator with notifications.cancel_event any
    event; whoever cannot read the event gets 404.
    """

    permission_classes = [permissions.IsAuthenticated]

    @extend_schema(
        request=None,
        responses={
            200: EventCancelledSerializer,
            403: error("another publisher's event, without notifications.cancel_event"),
            404: error("no such event, or not one you may read"),
        },
        summary="Cancel an event's deliveries not yet sent",
    )
    def post(self, request: Request, pk: str) -> Response:
        may_cancel_any = request.user.has_perm("notifications.cancel_event")
        event = get_object_or_404(Event.objects.all() if may_cancel_any else events_visible(user=request.user), pk=pk)
        if event.publisher_id != request.user.pk and not may_cancel_any:
            raise exceptions.PermissionDenied("cancelling another publisher's event needs notifications.cancel_event")
        event, cancelled = event_cancel(event_id=str(event.pk))
        return Response({"id": event.pk, "cancelled_at": event.cancelled_at, "cancelled": cancelled})


class NotificationListView(generics.ListAPIView[Notification]):
    """The signed-in user's in-app notifications, newest first, with the unread count."""

    serializer_class = NotificationSerializer

    def get_queryset(self) -> Any:
        return notification_list(user_id=self.request.user.pk)

    def list(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        response = super().list(request, *args, **kwargs)
        response.data["unread_count"] = notification_unread_count(user_id=request.user.pk)
        return response


class NotificationReadView(APIView):
    @extend_schema(request=None, responses={200: inline_serializer("UnreadCount", {"unread_count": IntegerField()})})
    def post(self, request: Request, notification_id: int) -> Response:
        get_object_or_404(Notification, pk=notification_id, user_id=request.user.pk)
        notification_mark_read(user_id=request.user.pk, notification_id=notification_id)
        return Response({"unread_count": notification_unread_count(user_id=request.user.pk)})


class NotificationReadAllView(APIView):
    @extend_schema(
        request=None,
        responses={
            200: inline_serializer("MarkedRead", {"marked_read": IntegerField(), "unread_count": IntegerField()})
        },
    )
    def post(self, request: Request) -> Response:
        changed = notification_mark_read(user_id=request.user.pk)
        return Response({"marked_read": changed, "unread_count": 0})


class PreferenceView(APIView):
    """Channels per event category; mandatory categories (security) cannot be switched off."""

    @extend_schema(responses={200: PreferenceSerializer(many=True)})
    def get(self, request: Request) -> Response:
        return Response(preference_list(user_id=request.user.pk))

    @extend_schema(
        request=PreferenceSerializer(many=True),
        responses={
            200: PreferenceSerializer(many=True),
            400: error("invalid items (`invalid_request`), `unknown_preference` or `mandatory_category`"),
        },
    )
    def put(self, request: Request) -> Response:
        incoming = PreferenceSerializer(data=request.data, many=True)
        incoming.is_valid(raise_exception=True)
        categories = {event_type.category: event_type.mandatory for event_type in event_types()}
        channels = {row["channel"] for row in preference_list(user_id=request.user.pk)}
        for row in incoming.validated_data:
            if row["category"] not in categories or row["channel"] not in channels:
                return error_response(
                    "unknown_preference",
                    f"no category {row['category']!r} with channel {row['channel']!r}",
                    detail={"categories": sorted(categories), "channels": sorted(channels)},
                )
            if categories[row["category"]] and not row["enabled"]:
                return error_response(
                    "mandatory_category",
                    f"{row['category']} notifications cannot be switched off",
                    detail={"category": row["category"]},
                )
        for row in incoming.validated_data:
            preference_set(
                user_id=request.user.pk, category=row["category"], channel=row["channel"], enabled=row["enabled"]
            )
        return Response(preference_list(user_id=request.user.pk))


class DigestPreferenceView(APIView):
    """How often the user gets a digest email of unread in-app notifications."""

    @extend_schema(responses={200: DigestPreferenceSerializer})
    def get(self, request: Request) -> Response:
        return Response({"frequency": digest_frequency_get(user_id=request.user.pk)})

    @extend_schema(
        request=DigestPreferenceSerializer,
        responses={200: DigestPreferenceSerializer, 400: error("`invalid_digest_frequency` or an unreadable body")},
    )
    def put(self, request: Request) -> Response:
        incoming = DigestPreferenceSerializer(data=request.data)
        if not incoming.is_valid():
            return error_response(
                "invalid_digest_frequency",
                "frequency must be one of daily, weekly, off",
                detail=incoming.errors,
            )
        frequency = digest_frequency_set(user_id=request.user.pk, frequency=incoming.validated_data["frequency"])
        return Response({"frequency": frequency})


class CanReplayFailedJobs(permissions.BasePermission):
    message = "replaying or discarding failed jobs needs the notifications.replay_failedjob permission"

    def has_permission(self, request: Request, view: APIView) -> bool:
        return bool(request.user and request.user.has_perm("notifications.replay_failedjob"))


class FailedJobActionView(APIView):
    """Replay or discard one failed job, for automation (the admin does the same)."""

    permission_classes = [permissions.IsAuthenticated, CanReplayFailedJobs]

    @extend_schema(
        request=FailedJobActionSerializer,
        responses={
            200: FailedJobStateSerializer,
            400: error("a discard without a reason (`reason_required`) or an invalid body"),
            409: error("the job was already replayed or discarded (`invalid_state`)"),
        },
    )
    def post(self, request: Request, failed_job_id: int, action: str) -> Response:
        get_object_or_404(FailedJob, pk=failed_job_id)
        incoming = FailedJobActionSerializer(data=request.data)
        incoming.is_valid(raise_exception=True)
        reason = incoming.validated_data["reason"].strip()
        # FailedJobStateError is an application error the handler renders: 409 invalid_state
        # for a job already replayed or discarded, 400 reason_required for a discard without why.
        if action == "replay":
            job = failed_job_replay(failed_job_id=failed_job_id, user_id=request.user.pk)
        else:
            job = failed_job_discard(failed_job_id=failed_job_id, user_id=request.user.pk, reason=reason)
        return Response({"id": job.pk, "state": job.state})
