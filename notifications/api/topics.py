"""The topics API: a publisher's named audiences and who is subscribed to them.

Topics belong to the publisher that created them: another publisher gets 404 for them, as
for a topic that does not exist, and may use the same keys for its own.
"""

from typing import Any

from django.http import Http404
from drf_spectacular.utils import extend_schema
from rest_framework import permissions, serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from core.schema import error
from notifications.api.views import CanPublishEvents
from notifications.models import Topic
from notifications.selectors import idempotency_scope, topic_get, topics_of
from notifications.services.topics import (
    MAX_SUBSCRIBERS_PER_CHANGE,
    topic_create,
    topic_delete,
    topic_subscribers_add,
    topic_subscribers_remove,
)

TOPIC_KEY = r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,99}$"


class TopicSerializer(serializers.Serializer[Any]):
    key = serializers.RegexField(TOPIC_KEY, help_text="letters, digits and _ . : - ; at most 100")
    name = serializers.CharField(max_length=200, required=False, allow_blank=True, default="")
    subscribers = serializers.IntegerField(read_only=True, source="subscriber_count")


class SubscribersSerializer(serializers.Serializer[Any]):
    user_ids = serializers.ListField(
        child=serializers.IntegerField(min_value=1), min_length=1, max_length=MAX_SUBSCRIBERS_PER_CHANGE
    )


class SubscribersChangedSerializer(serializers.Serializer[Any]):
    changed = serializers.IntegerField(help_text="subscriptions added (or removed) by this request")
    subscribers = serializers.IntegerField(help_text="the topic's subscribers now")


def _own_topic(request: Request, key: str) -> Topic:
    topic = topic_get(scope=idempotency_scope(request.user.pk), key=key)
    if topic is None:
        raise Http404(f"you have no topic {key!r}")
    return topic


def _with_count(topic: Topic) -> dict[str, Any]:
    return {"key": topic.key, "name": topic.name, "subscriber_count": topic.subscriptions.count()}


class TopicListView(APIView):
    permission_classes = [permissions.IsAuthenticated, CanPublishEvents]

    @extend_schema(responses={200: TopicSerializer(many=True)}, summary="Your topics")
    def get(self, request: Request) -> Response:
        topics = topics_of(scope=idempotency_scope(request.user.pk))
        return Response(TopicSerializer(topics, many=True).data)

    @extend_schema(
        request=TopicSerializer,
        responses={201: TopicSerializer, 409: error("you already have a topic with this key (`topic_exists`)")},
        summary="Create a topic",
    )
    def post(self, request: Request) -> Response:
        incoming = TopicSerializer(data=request.data)
        incoming.is_valid(raise_exception=True)
        topic = topic_create(scope=idempotency_scope(request.user.pk), **incoming.validated_data)
        return Response(TopicSerializer(_with_count(topic)).data, status=201)


class TopicDetailView(APIView):
    permission_classes = [permissions.IsAuthenticated, CanPublishEvents]

    @extend_schema(responses={200: TopicSerializer, 404: error("you have no topic with this key")})
    def get(self, request: Request, key: str) -> Response:
        return Response(TopicSerializer(_with_count(_own_topic(request, key))).data)

    @extend_schema(responses={204: None, 404: error("you have no topic with this key")})
    def delete(self, request: Request, key: str) -> Response:
        topic_delete(topic=_own_topic(request, key))
        return Response(status=204)


class TopicSubscribersView(APIView):
    """POST subscribes users to the topic; the `remove` action unsubscribes them."""

    permission_classes = [permissions.IsAuthenticated, CanPublishEvents]

    @extend_schema(
        request=SubscribersSerializer,
        responses={
            200: SubscribersChangedSerializer,
            400: error("an id names no user (nothing is changed) or the list is empty or too long"),
            404: error("you have no topic with this key"),
        },
    )
    def post(self, request: Request, key: str, action: str = "add") -> Response:
        topic = _own_topic(request, key)
        incoming = SubscribersSerializer(data=request.data)
        incoming.is_valid(raise_exception=True)
        user_ids = incoming.validated_data["user_ids"]
        if action == "remove":
            changed = topic_subscribers_remove(topic=topic, user_ids=user_ids)
        else:
            changed = topic_subscribers_add(topic=topic, user_ids=user_ids)
        return Response({"changed": changed, "subscribers": topic.subscriptions.count()})
