"""HTTP API: tokens for WebSocket/SSE, publishing for other backends, presence; and the
OpenAPI description of the SSE stream (a plain Django view, realtime/sse.py)."""

import logging
from typing import Any

from django.conf import settings
from drf_spectacular.utils import OpenApiParameter, extend_schema, inline_serializer
from rest_framework import exceptions, permissions, serializers, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from core.parsing import id_parse
from core.schema import ERROR_CONTENT, error, plain_view_operation
from realtime.auth import realtime_token_create
from realtime.connections import MAX_TOPICS_PER_CONNECTION
from realtime.exceptions import InvalidTopic
from realtime.presence import presence_online_users
from realtime.services import realtime_publish
from realtime.topics import topic_parse

logger = logging.getLogger(__name__)


class TokenView(APIView):
    """POST: a short-lived token for `?token=` on /ws/ and /events/."""

    permission_classes = [permissions.IsAuthenticated]

    @extend_schema(
        request=None,
        responses={
            200: inline_serializer(
                "RealtimeToken",
                {"token": serializers.CharField(), "expires_in": serializers.IntegerField(help_text="seconds")},
            )
        },
    )
    def post(self, request: Request) -> Response:
        token = realtime_token_create(user_id=request.user.pk)
        return Response({"token": token, "expires_in": settings.REALTIME_TOKEN_MAX_AGE_SECONDS})


class PublishSerializer(serializers.Serializer[dict[str, Any]]):
    topic = serializers.CharField(max_length=80)
    event = serializers.RegexField(r"^[A-Za-z0-9_.:-]{1,100}$")
    data = serializers.JSONField(required=False, default=dict)

    def validate_topic(self, value: str) -> str:
        try:
            topic_parse(value)
        except InvalidTopic as exc:
            raise serializers.ValidationError(str(exc)) from exc
        return value


class PublishView(APIView):
    """POST {topic, event, data}: publish to a topic (staff only), answer its id."""

    permission_classes = [permissions.IsAdminUser]

    @extend_schema(
        request=PublishSerializer,
        responses={
            202: inline_serializer(
                "RealtimePublished",
                {"topic": serializers.CharField(), "id": serializers.IntegerField(help_text="the topic's message id")},
            ),
            413: error("the encoded message is over REALTIME_MAX_MESSAGE_BYTES (`payload_too_large`)"),
        },
    )
    def post(self, request: Request) -> Response:
        serializer = PublishSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        body = serializer.validated_data
        message_id = realtime_publish(topic=body["topic"], event=body["event"], data=body["data"])
        logger.info(
            "user %s published %s #%s on %s",
            request.user.pk,
            body["event"],
            message_id,
            body["topic"],
        )
        return Response({"topic": body["topic"], "id": message_id}, status=status.HTTP_202_ACCEPTED)


class PresenceView(APIView):
    """GET ?users=1,2: which of these users are connected now."""

    @extend_schema(
        parameters=[
            OpenApiParameter(
                "users",
                str,
                required=True,
                description="1 to 100 user ids separated by commas",
                pattern=r"^[0-9]+(,[0-9]+){0,99}$",
            )
        ],
        responses={
            200: inline_serializer(
                "Presence",
                {"users": serializers.DictField(child=serializers.BooleanField(), help_text="user id: online")},
            ),
            400: error("`users` is missing or not 1 to 100 ids (`invalid_request`)"),
        },
    )
    def get(self, request: Request) -> Response:
        raw = request.query_params.get("users", "")
        parts = [p.strip() for p in raw.split(",") if p.strip()]
        try:
            if not parts or len(parts) > 100:
                raise ValueError("1 to 100 ids")
            user_ids = [id_parse(p) for p in parts]
        except ValueError as exc:
            raise exceptions.ValidationError(
                {"users": ["give 1 to 100 user ids separated by commas: ?users=1,2"]}
            ) from exc
        online = presence_online_users(user_ids=user_ids)
        return Response({"users": {str(k): v for k, v in online.items()}})


plain_view_operation(
    "/events/",
    "get",
    {
        "operationId": "events_stream",
        "summary": "Server-Sent Events of the named topics (docs/realtime.md)",
        "tags": ["events"],
        "parameters": [
            {
                "name": "topic",
                "in": "query",
                "required": True,
                "style": "form",
                "explode": True,
                "description": f"1 to {MAX_TOPICS_PER_CONNECTION} topics: user:<id>, room:<key>, live:<key>",
                "schema": {"type": "array", "items": {"type": "string"}, "minItems": 1},
            },
            {
                "name": "token",
                "in": "query",
                "description": "a token from POST /api/realtime/token/ (or a session cookie)",
                "schema": {"type": "string"},
            },
            {
                "name": "last_event_id",
                "in": "query",
                "description": "resume after this SSE id (the Last-Event-ID header wins)",
                "schema": {"type": "string"},
            },
            {"name": "Last-Event-ID", "in": "header", "schema": {"type": "string"}},
        ],
        "responses": {
            "200": {
                "description": "an endless stream of events, heartbeats and resync notices",
                "content": {"text/event-stream": {"schema": {"type": "string"}}},
            },
            "400": {"description": "no topic, too many, or one malformed", "content": ERROR_CONTENT},
            "401": {"description": "no session and no valid token", "content": ERROR_CONTENT},
            "403": {"description": "a topic this user may not read (`topic_refused`)", "content": ERROR_CONTENT},
        },
    },
)
