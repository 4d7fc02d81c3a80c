"""Writes of topics: create and delete them, subscribe and unsubscribe users."""

import logging

from django.db import IntegrityError, transaction

from core.errors import ApplicationError
from notifications.audiences import unknown_users
from notifications.models import Topic, TopicSubscription

logger = logging.getLogger(__name__)

# Subscribers change through the API this many at a time; more go in several requests.
MAX_SUBSCRIBERS_PER_CHANGE = 1000


class TopicExistsError(ApplicationError):
    code = "topic_exists"
    status = 409


def topic_create(*, scope: str, key: str, name: str = "") -> Topic:
    """Create a publisher's topic; a key it already has is refused (409)."""
    try:
        with transaction.atomic():
            return Topic.objects.create(scope=scope, key=key, name=name)
    except IntegrityError:
        raise TopicExistsError(f"you already have a topic {key!r}", detail={"key": key}) from None


def topic_delete(*, topic: Topic) -> None:
    """Delete a topic and its subscriptions; events already addressed to it reach nobody more."""
    topic.delete()


def topic_subscribers_add(*, topic: Topic, user_ids: list[int]) -> int:
    """Subscribe users (all of them or, if one does not exist, none); answer how many were new."""
    unique = sorted(set(user_ids))
    problem = unknown_users(unique)
    if problem:
        raise ApplicationError(f"{problem}: nothing was changed", detail={"user_ids": [problem]})
    before = TopicSubscription.objects.filter(topic=topic, user_id__in=unique).count()
    TopicSubscription.objects.bulk_create(
        [TopicSubscription(topic=topic, user_id=user_id) for user_id in unique], ignore_conflicts=True
    )
    return len(unique) - before


def topic_subscribers_remove(*, topic: Topic, user_ids: list[int]) -> int:
    """Unsubscribe users; answer how many were subscribed."""
    removed, _ = TopicSubscription.objects.filter(topic=topic, user_id__in=set(user_ids)).delete()
    return removed
