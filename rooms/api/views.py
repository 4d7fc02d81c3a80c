"""Rooms API: enqueue a message, read a room's state, receive the chat platform's acks."""

import logging
from typing import Any

from django.http import HttpResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema, inline_serializer
from rest_framework import serializers, status
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from core.errors import error_response
from core.parsers import json_loads
from core.schema import error
from rooms import selectors, services
from rooms.exceptions import InvalidWebhookError
from rooms.providers import SIGNATURE_HEADER, chat_signature_valid

logger = logging.getLogger(__name__)


def invalid_request(detail: Any, message: str) -> HttpResponse:
    return error_response("invalid_request", message, detail=detail)


class RoomMessageIn(serializers.Serializer[dict[str, Any]]):
    body = serializers.CharField(max_length=4096)


class RoomDetailView(APIView):
    @extend_schema(
        responses={
            200: OpenApiTypes.OBJECT,
            404: error("no such room (`room_not_found`)"),
        },
        description="In flight, queued, counts per status, last ack and timeouts (docs/ordered-delivery.md).",
    )
    def get(self, request: Request, room_id: int) -> HttpResponse:
        return Response(selectors.room_state(room_id=room_id))


class RoomMessagesView(APIView):
    @extend_schema(
        request=RoomMessageIn,
        responses={
            201: inline_serializer(
                "RoomMessageEnqueued",
                {
                    "id": serializers.IntegerField(),
                    "room": serializers.IntegerField(),
                    "sequence": serializers.IntegerField(),
                    "status": serializers.CharField(),
                },
            ),
            404: error("no such room (`room_not_found`)"),
        },
    )
    def post(self, request: Request, room_id: int) -> HttpResponse:
        payload = RoomMessageIn(data=request.data)
        if not payload.is_valid():
            return invalid_request(payload.errors, 'send {"body": "<text of the message>"}')
        message = services.room_message_enqueue(room_id=room_id, body=payload.validated_data["body"])
        return Response(
            {"id": message.pk, "room": room_id, "sequence": message.sequence, "status": message.status},
            status=status.HTTP_201_CREATED,
        )


class ChatWebhookView(APIView):
    """The chat platform's delivery ack: verified by HMAC, idempotent."""

    authentication_classes: list[type] = []
    permission_classes = [AllowAny]

    @extend_schema(
        request=inline_serializer(
            "ChatDeliveryAck",
            {
                "type": serializers.CharField(help_text="message.delivered; other types are ignored"),
                "id": serializers.CharField(required=False, help_text="the platform's message id"),
                "idempotency_key": serializers.CharField(help_text="the key Carillon sent the message with"),
            },
        ),
        parameters=[
            OpenApiParameter(
                SIGNATURE_HEADER,
                str,
                OpenApiParameter.HEADER,
                required=True,
                description="hex HMAC-SHA256 of the raw body with ROOMS_CHAT_WEBHOOK_SECRET",
            )
        ],
        responses={
            200: inline_serializer(
                "ChatAckOutcome",
                {
                    "status": serializers.ChoiceField(choices=["applied", "ignored"]),
                    "message": serializers.IntegerField(required=False, allow_null=True),
                    "reason": serializers.CharField(required=False),
                },
            ),
            400: error("not JSON with an idempotency_key (`invalid_request`)"),
            403: error("the signature does not match the body (`invalid_signature`)"),
        },
    )
    def post(self, request: Request) -> HttpResponse:
        raw = request.body
        if not chat_signature_valid(body=raw, signature=request.headers.get(SIGNATURE_HEADER, "")):
            logger.warning("chat webhook with a bad signature refused")
            raise InvalidWebhookError(
                f"the {SIGNATURE_HEADER} header does not match the body: check that the "
                "webhook secret (ROOMS_CHAT_WEBHOOK_SECRET) is the one the platform signs with",
            )
        try:
            event = json_loads(raw)
            key = str(event["idempotency_key"])
        except (ValueError, KeyError, TypeError):
            return invalid_request(None, "a delivery webhook carries JSON with an idempotency_key")
        if event.get("type") != "message.delivered":
            return Response({"status": "ignored", "reason": "not a delivery event"})
        outcome = services.room_message_ack(idempotency_key=key, provider_message_id=str(event.get("id") or ""))
        return Response({"status": "applied" if outcome.applied else "ignored", "message": outcome.message_id})
