"""Rooms API: enqueue a message, read a room's state, receive the chat platform's acks."""

import json
import logging
from typing import Any

from django.http import HttpResponse
from rest_framework import serializers, status
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from rooms import selectors, services
from rooms.exceptions import InvalidRequestError
from rooms.providers import SIGNATURE_HEADER, TIMESTAMP_HEADER, chat_webhook_verify

logger = logging.getLogger(__name__)


class RoomMessageIn(serializers.Serializer[dict[str, Any]]):
    body = serializers.CharField(max_length=4096)


class RoomDetailView(APIView):
    def get(self, request: Request, room_id: int) -> HttpResponse:
        return Response(selectors.room_state(room_id=room_id))


class RoomMessagesView(APIView):
    def post(self, request: Request, room_id: int) -> HttpResponse:
        payload = RoomMessageIn(data=request.data)
        if not payload.is_valid():
            raise InvalidRequestError('send {"body": "<text of the message>"}', detail=payload.errors)
        message = services.room_message_enqueue(room_id=room_id, body=payload.validated_data["body"])
        return Response(
            {"id": message.pk, "room": room_id, "sequence": message.sequence, "status": message.status},
            status=status.HTTP_201_CREATED,
        )


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


class ChatWebhookView(APIView):
    """The chat platform's delivery ack: verified by HMAC over a timestamp and the body, idempotent."""

    authentication_classes: list[type] = []
    permission_classes = [AllowAny]

    def post(self, request: Request) -> HttpResponse:
        raw = request.body
        chat_webhook_verify(
            body=raw,
            signature=request.headers.get(SIGNATURE_HEADER, ""),
            timestamp=request.headers.get(TIMESTAMP_HEADER, ""),
        )
        try:
            event = json.loads(raw)
        except ValueError:  # not JSON, or not UTF-8 (UnicodeDecodeError)
            raise InvalidRequestError("a webhook body is JSON in UTF-8", detail={"body": ["not JSON"]}) from None
        ack = chat_webhook_parse(event)
        if ack is None:
            return Response({"status": "ignored", "reason": "not a delivery event"})
        outcome = services.room_message_ack(
            idempotency_key=str(ack["idempotency_key"]), provider_message_id=ack.get("id") or ""
        )
        return Response({"status": "applied" if outcome.applied else "ignored", "message": outcome.message_id})
