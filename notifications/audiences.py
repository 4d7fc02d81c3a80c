"""Audiences: an event addressed to many users at once.

An event names its recipients in one of three ways beside the single `user_id` of its
data: an explicit list of user ids (at most MAX_INLINE_RECIPIENTS, inline in the request),
a declared audience (a named, parameterised queryset of users, registered here like
subscribers: `group_members(group="beta")`), or a topic users are subscribed to. However
large the audience, its user ids are read in pages ordered by id (keyset pagination): no
process ever holds the whole list.
"""

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypedDict

from django.contrib.auth import get_user_model
from django.db.models import QuerySet
from rest_framework import serializers

from core.registry import Registry
from notifications.exceptions import InvalidEvent
from notifications.models import TopicSubscription
from notifications.selectors import topic_get

# Larger lists go through a declared audience or a topic, read in pages.
MAX_INLINE_RECIPIENTS = 1000


class AudienceSpec(TypedDict, total=False):
    """Who an event is for, as published: exactly one of the three keys."""

    users: list[int]
    audience: str
    params: dict[str, Any]
    topic: str


@dataclass(frozen=True)
class Audience:
    name: str
    # Given the validated params, the users, or rows that each name one through a `user`
    # foreign key (memberships, follows, subscriptions); any order (pages are read by user
    # id). Membership rows page in time proportional to the page however far the broadcast
    # has gone; a queryset of users joined to memberships does not (see _pages).
    users: Callable[..., QuerySet[Any]]
    params: type[serializers.Serializer[Any]] | None = None
    description: str = ""


_AUDIENCES: Registry[Audience] = Registry("audience")


def audience_register(audience: Audience) -> Audience:
    return _AUDIENCES.register(audience.name, audience)


def audiences() -> list[Audience]:
    return _AUDIENCES.values()


def _refuse(field: str, message: str) -> InvalidEvent:
    return InvalidEvent(message, detail={f"audience.{field}": [message]})


def audience_validate(spec: Any, *, scope: str) -> AudienceSpec:
    """Check an event's audience as published; answer it cleaned, or raise InvalidEvent.

    `scope` is the publisher's (see Topic.scope): a topic of another publisher is unknown.
    """
    if not isinstance(spec, dict) or len(set(spec) & {"users", "audience", "topic"}) != 1:
        raise _refuse("", "audience is an object with exactly one of users, audience, topic")
    if "users" in spec:
        return {"users": _users_validate(spec["users"])}
    if "topic" in spec:
        key = spec["topic"]
        if not isinstance(key, str) or topic_get(scope=scope, key=key) is None:
            raise _refuse("topic", f"no topic {key!r} of yours: create it with POST /api/topics/")
        return {"topic": key}
    audience = _AUDIENCES.get(spec["audience"]) if isinstance(spec["audience"], str) else None
    if audience is None:
        raise _refuse("audience", f"unknown audience {spec['audience']!r}; declared: {', '.join(_AUDIENCES.names())}")
    params = spec.get("params")
    params = {} if params is None else params
    if audience.params is None:
        if params:
            raise _refuse("params", f"audience {audience.name} takes no params")
        return {"audience": audience.name, "params": {}}
    if not isinstance(params, dict):
        raise _refuse("params", "params is an object")
    schema = audience.params(data=params)
    if not schema.is_valid():
        raise InvalidEvent(
            f"audience {audience.name}: invalid params",
            detail={f"audience.params.{name}": messages for name, messages in schema.errors.items()},
        )
    return {"audience": audience.name, "params": dict(schema.to_representation(schema.validated_data))}


def _users_validate(ids: Any) -> list[int]:
    if not isinstance(ids, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
        raise _refuse("users", "users is a list of user ids")
    if not 1 <= len(ids) <= MAX_INLINE_RECIPIENTS:
        raise _refuse(
            "users", f"users lists 1 to {MAX_INLINE_RECIPIENTS} ids; address more through an audience or a topic"
        )
    unique = sorted(set(ids))
    problem = unknown_users(unique)
    if problem:
        raise _refuse("users", problem)
    return unique


def unknown_users(user_ids: list[int]) -> str | None:
    """Say which of these ids name no user (None: all do); one query."""
    known = set(get_user_model().objects.filter(pk__in=user_ids).values_list("pk", flat=True))
    missing = sorted(set(user_ids) - known)
    if not missing:
        return None
    return "no user with id " + ", ".join(map(str, missing[:20])) + (" …" if len(missing) > 20 else "")


def recipient_id_pages(spec: AudienceSpec, *, scope: str, size: int, after: int = 0) -> Iterator[list[int]]:
    """The audience's active users' ids, ascending, `size` at a time, from past `after`."""
    if "users" in spec:
        yield from _pages(get_user_model().objects.filter(pk__in=spec["users"]), size=size, after=after)
    elif "topic" in spec:
        topic = topic_get(scope=scope, key=spec["topic"])
        if topic is None:  # deleted since the event was published: nobody left to tell
            return
        yield from _pages(TopicSubscription.objects.filter(topic=topic), size=size, after=after)
    else:
        audience = _AUDIENCES.get(spec["audience"])
        if audience is None:  # no longer declared since the event was published: nobody to tell
            return
        yield from _pages(audience.users(**spec.get("params", {})), size=size, after=after)


def _pages(rows: QuerySet[Any], *, size: int, after: int) -> Iterator[list[int]]:
    """Pages of the active users among `rows`: users, or rows with a `user` foreign key."""
    user_model = get_user_model()
    while True:
        if rows.model is user_model:
            ids = rows.filter(is_active=True, pk__gt=after)
        else:
            # The cursor bounds both sides: PostgreSQL does not carry `> after` across a
            # join, so a join bounded on one side reads the other from its first row on
            # every page (a 100,000-member group: each page cost more than the last).
            members = rows.filter(user_id__gt=after).values("user_id")
            ids = user_model.objects.filter(is_active=True, pk__gt=after, pk__in=members)
        page = list(ids.order_by("pk").values_list("pk", flat=True)[:size])
        if not page:
            return
        yield page
        after = page[-1]


# --- Carillon's demo audiences -------------------------------------------------------


class GroupParams(serializers.Serializer[Any]):
    group = serializers.CharField(max_length=150, help_text="a django.contrib.auth group's name")


audience_register(
    Audience("all_active_users", lambda: get_user_model().objects.all(), description="Every active user.")
)
audience_register(
    Audience(
        "group_members",
        lambda group: get_user_model().groups.through.objects.filter(group__name=group),
        params=GroupParams,
        description="The members of one auth group.",
    )
)
