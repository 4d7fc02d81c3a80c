"""Topics: a publisher's named audiences. Every change is checked against the caller,
and a bad request changes nothing."""

from typing import Any

import pytest
from django.contrib.auth.models import Group, Permission
from django.db import connection
from django.test.utils import CaptureQueriesContext
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from notifications.audiences import AudienceSpec, audience_validate, recipient_id_pages
from notifications.exceptions import InvalidEvent
from notifications.models import Topic, TopicSubscription
from notifications.selectors import idempotency_scope

pytestmark = pytest.mark.django_db


def _publisher_api(django_user_model: Any, name: str) -> tuple[Any, APIClient]:
    user = django_user_model.objects.create_user(name)
    user.user_permissions.add(Permission.objects.get(codename="publish_event"))
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=user).key}")
    return user, client


@pytest.fixture
def users(django_user_model: Any) -> list[Any]:
    return [django_user_model.objects.create_user(f"reader{i}") for i in range(5)]


def test_a_publisher_creates_a_topic_subscribes_users_and_unsubscribes_them(
    django_user_model: Any, users: list[Any]
) -> None:
    _, api = _publisher_api(django_user_model, "backend")
    created = api.post("/api/topics/", {"key": "product-updates", "name": "Product updates"}, format="json")
    assert created.status_code == 201, created.json()
    assert created.json() == {"key": "product-updates", "name": "Product updates", "subscribers": 0}

    ids = [user.pk for user in users]
    added = api.post("/api/topics/product-updates/subscribers/", {"user_ids": ids + ids[:2]}, format="json")
    again = api.post("/api/topics/product-updates/subscribers/", {"user_ids": ids[:3]}, format="json")
    removed = api.post("/api/topics/product-updates/subscribers/remove/", {"user_ids": ids[:2]}, format="json")

    assert added.json() == {"changed": 5, "subscribers": 5}
    assert again.json() == {"changed": 0, "subscribers": 5}
    assert removed.json() == {"changed": 2, "subscribers": 3}
    assert api.get("/api/topics/").json() == [{"key": "product-updates", "name": "Product updates", "subscribers": 3}]


def test_an_unknown_user_id_is_named_and_subscribes_nobody(django_user_model: Any, users: list[Any]) -> None:
    _, api = _publisher_api(django_user_model, "backend")
    api.post("/api/topics/", {"key": "news"}, format="json")

    refused = api.post("/api/topics/news/subscribers/", {"user_ids": [users[0].pk, 999_999]}, format="json")

    assert refused.status_code == 400
    assert refused.json()["error"] == "invalid_request" and "999999" in refused.json()["message"]
    assert not TopicSubscription.objects.exists()


def test_bad_requests_get_clear_errors(django_user_model: Any) -> None:
    _, api = _publisher_api(django_user_model, "backend")
    api.post("/api/topics/", {"key": "news"}, format="json")

    assert api.post("/api/topics/", {"key": "news"}, format="json").json()["error"] == "topic_exists"
    assert api.post("/api/topics/", {"key": "has space"}, format="json").status_code == 400
    assert api.post("/api/topics/news/subscribers/", {"user_ids": []}, format="json").status_code == 400
    too_many = {"user_ids": list(range(1, 1002))}
    assert api.post("/api/topics/news/subscribers/", too_many, format="json").status_code == 400
    assert api.post("/api/topics/news/subscribers/", {"user_ids": ["x"]}, format="json").status_code == 400
    assert Topic.objects.count() == 1 and not TopicSubscription.objects.exists()


def test_another_publishers_topic_is_not_found_and_its_key_is_free_for_each(
    django_user_model: Any, users: list[Any]
) -> None:
    _, mine = _publisher_api(django_user_model, "backend")
    _, theirs = _publisher_api(django_user_model, "other-backend")
    mine.post("/api/topics/", {"key": "news"}, format="json")

    assert theirs.get("/api/topics/news/").status_code == 404
    assert theirs.post("/api/topics/news/subscribers/", {"user_ids": [users[0].pk]}, format="json").status_code == 404
    assert theirs.delete("/api/topics/news/").status_code == 404
    assert theirs.get("/api/topics/").json() == []
    assert theirs.post("/api/topics/", {"key": "news"}, format="json").status_code == 201
    assert Topic.objects.count() == 2 and not TopicSubscription.objects.exists()


def test_topics_need_the_publish_permission(django_user_model: Any) -> None:
    reader = django_user_model.objects.create_user("reader")
    api = APIClient()
    api.force_authenticate(reader)

    assert api.post("/api/topics/", {"key": "news"}, format="json").status_code == 403
    assert not Topic.objects.exists()


def test_recipients_are_read_in_id_pages_of_active_users_only(django_user_model: Any, users: list[Any]) -> None:
    users[2].is_active = False
    users[2].save()
    group = Group.objects.create(name="beta")
    group.user_set.add(*users[1:])
    topic = Topic.objects.create(scope="", key="all")
    TopicSubscription.objects.bulk_create(TopicSubscription(topic=topic, user=user) for user in users)
    active = [user.pk for user in users if user.is_active]

    def pages(spec: AudienceSpec) -> list[list[int]]:
        return list(recipient_id_pages(audience_validate(spec, scope=""), scope="", size=2))

    assert pages({"topic": "all"}) == [active[:2], active[2:]]
    assert pages({"users": [users[4].pk, users[0].pk, users[2].pk]}) == [[users[0].pk, users[4].pk]]
    assert pages({"audience": "group_members", "params": {"group": "beta"}}) == [active[1:3], active[3:]]
    assert sum(pages({"audience": "all_active_users"}), []) == active
    # Resuming after a page already done reads only what follows it.
    resumed = recipient_id_pages({"topic": "all"}, scope="", size=10, after=active[1])
    assert list(resumed) == [active[2:]]


def test_a_page_of_members_bounds_both_sides_of_its_join_by_the_cursor(users: list[Any]) -> None:
    # Bounded on one side only, PostgreSQL reads the other side of the join from its first
    # row for every page: a page of a large audience costs more the further it is.
    Group.objects.create(name="beta").user_set.add(*users)
    topic = Topic.objects.create(scope="", key="all")
    TopicSubscription.objects.bulk_create(TopicSubscription(topic=topic, user=user) for user in users)
    cursor = users[1].pk
    for spec in ({"topic": "all"}, {"audience": "group_members", "params": {"group": "beta"}}):
        with CaptureQueriesContext(connection) as queries:
            pages = list(recipient_id_pages(AudienceSpec(**spec), scope="", size=2, after=cursor))  # type: ignore[typeddict-item]
        assert pages == [[users[2].pk, users[3].pk], [users[4].pk]]
        reads = [query["sql"] for query in queries.captured_queries if query["sql"].endswith("LIMIT 2")]
        assert len(reads) == 3, reads
        first = reads[0]
        assert f'"auth_user"."id" > {cursor}' in first, first
        assert f'"user_id" > {cursor}' in first, first


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        ({}, "audience."),
        ({"users": [1], "topic": "x"}, "audience."),
        ({"users": []}, "audience.users"),
        ({"users": list(range(1, 1002))}, "audience.users"),
        ({"users": [True]}, "audience.users"),
        ({"users": [999_999]}, "audience.users"),
        ({"topic": "missing"}, "audience.topic"),
        ({"audience": "nobody"}, "audience.audience"),
        ({"audience": "all_active_users", "params": {"x": 1}}, "audience.params"),
        ({"audience": "group_members", "params": {}}, "audience.params.group"),
        ({"audience": "group_members", "params": []}, "audience.params"),
    ],
)
def test_an_invalid_audience_is_refused_naming_the_field(spec: Any, field: str, users: list[Any]) -> None:
    with pytest.raises(InvalidEvent) as refused:
        audience_validate(spec, scope=idempotency_scope(users[0].pk))
    assert list(refused.value.detail) == [field]
