"""Rooms API: enqueue a message, read a room's state, receive the chat platform's acks."""

import logging
from collections.abc import Mapping
from typing import Any

from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.http import HttpResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema, inline_serializer
from rest_framework import serializers, status
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from core.parsers import json_loads
from core.schema import error
from rooms import selectors
from rooms.exceptions import InvalidRequestError, RoomError
from rooms.models import SHARDS
from rooms.providers import SIGNATURE_HEADER, TIMESTAMP_HEADER, chat_webhook_verify
from rooms.services.acks import room_message_ack
from rooms.services.enqueue import room_message_enqueue

logger = logging.getLogger(__name__)


class RoomMessageIn(serializers.Serializer[dict[str, Any]]):
    body = serializers.CharField(max_length=4096)
    idempotency_key = serializers.CharField(
        max_length=200, required=False, allow_null=True, default=None,
        help_text="your key for this message: a retry with the same key and body answers 200 with the first "
        "message and enqueues nothing; the same key with another body answers 409",
    )


class RoomMessageAccepted(serializers.Serializer[dict[str, Any]]):
    id = serializers.IntegerField()
    room = serializers.IntegerField()
    sequence = serializers.IntegerField()
    status = serializers.CharField()
    duplicate = serializers.BooleanField()


ERRORS = {
    403: error("you may read the room but not send into it (`permission_denied`)"),
    404: error("no such room, or not yours: rooms.view_room reads any (`room_not_found`)"),
}


class RoomDetailView(APIView):
    """A room's state, for its owner or an operator with rooms.view_room."""

    @extend_schema(
        responses={200: OpenApiTypes.OBJECT, 404: ERRORS[404]},
        description="In flight, queued, counts per status, last ack and timeouts (docs/ordered-delivery.md).",
    )
    def get(self, request: Request, room_id: int) -> HttpResponse:
        room = selectors.room_for_caller(room_id=room_id, user=request.user)
        return Response(selectors.room_state(room_id=room.pk))


class RoomMessagesView(APIView):
    """Enqueue a message, for the room's owner or an operator with rooms.send_room_message."""

    @extend_schema(
        request=RoomMessageIn,
        responses={
            202: RoomMessageAccepted, 200: RoomMessageAccepted, **ERRORS,
            409: error("the key was used for another message (`idempotency_key_reused`)"),
        },
        description="Enqueues the message and answers 202 once it is committed; it is sent after every earlier "
        "message of the room. A repeated idempotency_key answers 200 with the first message.",
    )
    def post(self, request: Request, room_id: int) -> HttpResponse:
        room = selectors.room_for_caller(room_id=room_id, user=request.user, send=True)
        payload = RoomMessageIn(data=request.data)
        if not payload.is_valid():
            raise InvalidRequestError('send {"body": "<text of the message>"}', detail=payload.errors)
        key = payload.validated_data["idempotency_key"]
        first = selectors.room_message_for_key(scope=selectors.caller_scope(request.user.pk), key=key) if key else None
        message = room_message_enqueue(
            room_id=room.pk, body=payload.validated_data["body"], caller_id=request.user.pk, idempotency_key=key
        )
        duplicate = first is not None and first.pk == message.pk
        answer = {"id": message.pk, "room": room.pk, "sequence": message.sequence, "status": message.status,
                  "duplicate": duplicate}
        return Response(answer, status=status.HTTP_200_OK if duplicate else status.HTTP_202_ACCEPTED)


class StringField(serializers.CharField):
    """A JSON string; DRF's CharField also turns numbers into strings."""

    def to_internal_value(self, data: Any) -> str:
        if not isinstance(data, str):
            self.fail("invalid")
        return super().to_internal_value(data)


class UuidStringField(serializers.UUIDField):
    """A UUID written as a JSON string; DRF's UUIDField also takes integers."""

    def to_internal_value(self, data: Any) -> Any:
        if not isinstance(data, str):
            self.fail("invalid", value=data)
        return super().to_internal_value(data)


class ChatWebhookIn(serializers.Serializer[dict[str, Any]]):
    type = StringField(max_length=100)
    idempotency_key = UuidStringField(required=False)
    id = StringField(max_length=255, required=False, allow_blank=True, allow_null=True)


DELIVERED = "message.delivered"


def chat_webhook_parse(event: Any) -> dict[str, Any] | None:
    """Validate a parsed webhook body: a delivery ack's fields, or None for another event.

    The platform retries a webhook that does not get a 2xx, so a body that can never be
    applied gets a 400 naming its fields (never a 500, which would be retried forever).
    """
    if not isinstance(event, dict):
        raise InvalidRequestError("a webhook body is a JSON object", detail={"body": ["must be a JSON object"]})
    incoming = ChatWebhookIn(data=event)
    if not incoming.is_valid():
        raise InvalidRequestError(
            f"invalid webhook {', '.join(incoming.errors)}: a delivery ack is "
            '{"type": "message.delivered", "id": "<platform id>", "idempotency_key": "<uuid>"}',
            detail=incoming.errors,
        )
    fields = incoming.validated_data
    if fields["type"] != DELIVERED:
        return None
    if "idempotency_key" not in fields:
        raise InvalidRequestError(
            "a delivery ack names its message by idempotency_key",
            detail={"idempotency_key": ["This field is required."]},
        )
    return fields


ACK_OUTCOME = inline_serializer(
    "ChatAckOutcome",
    {
        "status": serializers.ChoiceField(choices=["accepted", "ignored"]),
        "message": serializers.IntegerField(required=False, allow_null=True),
        "reason": serializers.CharField(required=False),
    },
)


def _owner_route(query: Mapping[str, str]) -> tuple[int, int] | None:
    """The (shard, room) a shard owner put in the callback URL (`?shard=&room=`), if both
    are there and well formed; otherwise the ack is routed by a database read."""
    shard, room = query.get("shard", ""), query.get("room", "")
    if not (shard.isdecimal() and room.isdecimal() and len(room) < 19 and int(shard) < SHARDS):
        return None
    return int(shard), int(room)


class ChatWebhookView(APIView):
    """The chat platform's delivery ack: verified by HMAC over a timestamp and the body, and
    handed to the room's shard owner. Acks that name their route are answered in front of
    Django (rooms/api/receiver.py) by the same `chat_webhook_answer`."""

    authentication_classes: list[type] = []
    permission_classes = [AllowAny]

    @extend_schema(
        request=ChatWebhookIn,
        parameters=[
            OpenApiParameter(TIMESTAMP_HEADER, str, OpenApiParameter.HEADER, required=True,
                             description="unix seconds when signed; refused beyond 5 minutes"),
            OpenApiParameter(SIGNATURE_HEADER, str, OpenApiParameter.HEADER, required=True,
                             description='sha256=<hex HMAC-SHA256 of "<timestamp>." followed by the raw body>'),
        ],
        responses={
            200: ACK_OUTCOME,
            202: ACK_OUTCOME,
            400: error("the body is not a valid webhook (`invalid_request`)"),
            403: error("`invalid_signature`, or `invalid_timestamp` (missing, or too old)"),
            413: error("the body is over DATA_UPLOAD_MAX_MEMORY_SIZE (`payload_too_large`)"),
            503: error("RabbitMQ did not take the ack for the room's sequencer (`owner_unreachable`): send it again"),
        },
        description="202 `accepted`: handed to the room's shard owner, which applies it moments later (or ignores "
        "a repeated or late ack). 200 `ignored`: not a delivery event, or no message has this idempotency key.",
    )
    def post(self, request: Request) -> HttpResponse:
        try:
            raw = request.body
        except RequestDataTooBig:
            raise payload_too_large() from None
        status_code, answer = chat_webhook_answer(
            raw, signature=request.headers.get(SIGNATURE_HEADER, ""),
            timestamp=request.headers.get(TIMESTAMP_HEADER, ""), route=_owner_route(request.query_params),
        )
        return Response(answer, status=status_code)


def payload_too_large() -> RoomError:
    return RoomError(
        "a webhook body may be at most DATA_UPLOAD_MAX_MEMORY_SIZE bytes",
        code="payload_too_large", status=413, detail={"limit": settings.DATA_UPLOAD_MAX_MEMORY_SIZE},
    )


def chat_webhook_answer(
    raw: bytes, *, signature: str, timestamp: str, route: tuple[int, int] | None
) -> tuple[int, dict[str, Any]]:
    """Verify, parse and apply (or hand over) one chat webhook: its status and body.
    Raises the rooms app's errors (each one the API's error body)."""
    chat_webhook_verify(body=raw, signature=signature, timestamp=timestamp)
    try:
        event = json_loads(raw)
    except ValueError:  # not JSON, or not UTF-8 (UnicodeDecodeError)
        raise InvalidRequestError("a webhook body is JSON in UTF-8", detail={"body": ["not JSON"]}) from None
    ack = chat_webhook_parse(event)
    if ack is None:
        return 200, {"status": "ignored", "reason": "not a delivery event"}
    outcome = room_message_ack(
        idempotency_key=str(ack["idempotency_key"]), provider_message_id=ack.get("id") or "", route=route,
    )
    if outcome.forwarded:
        return 202, {"status": "accepted", "message": outcome.message_id}
    return 200, {"status": "ignored", "reason": "no message has this idempotency key"}
