"""Rooms API: enqueue a message, read a room's state, receive the chat platform's acks."""

import logging
from typing import Any

from django.http import HttpResponse
from rest_framework import serializers, status
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from core.errors import error_response
from core.parsers import json_loads
from rooms import selectors, services
from rooms.exceptions import InvalidWebhookError
from rooms.providers import SIGNATURE_HEADER, chat_signature_valid

logger = logging.getLogger(__name__)


def invalid_request(detail: Any, message: str) -> HttpResponse:
    return error_response("invalid_request", message, detail=detail)


class RoomMessageIn(serializers.Serializer[dict[str, Any]]):
    body = serializers.CharField(max_length=4096)


class RoomDetailView(APIView):
    def get(self, request: Request, room_id: int) -> HttpResponse:
        return Response(selectors.room_state(room_id=room_id))


class RoomMessagesView(APIView):
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
