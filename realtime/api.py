"""HTTP API: tokens for WebSocket/SSE, and publishing for other backends."""

import logging
from typing import Any

from rest_framework import exceptions, permissions, serializers, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from core.parsing import id_parse
from realtime.auth import realtime_token_create
from realtime.exceptions import InvalidTopic
from realtime.presence import presence_online_users
from realtime.services import realtime_publish
from realtime.topics import topic_parse

logger = logging.getLogger(__name__)


class TokenView(APIView):
    """POST: a short-lived token for `?token=` on /ws/ and /events/."""

    permission_classes = [permissions.IsAuthenticated]

    def post(self, request: Request) -> Response:
        from django.conf import settings

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
