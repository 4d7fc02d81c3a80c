"""POST /api/events/: every bad input gets its status and JSON error, and changes nothing."""

import json
from typing import Any

import pytest
from django.contrib.auth.models import Permission
from django.test import override_settings
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from notifications.models import Delivery, Event, OutboxMessage
from notifications.services.events import event_publish

pytestmark = pytest.mark.django_db


@pytest.fixture
def publisher(django_user_model: Any) -> Any:
    user = django_user_model.objects.create_user("backend")
    user.user_permissions.add(Permission.objects.get(codename="publish_event"))
    return user


@pytest.fixture
def api(publisher: Any) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=publisher).key}")
    return client


def assert_nothing_changed() -> None:
    assert not Event.objects.exists()
    assert not OutboxMessage.objects.exists()


def test_valid_event_is_accepted_with_its_id_and_outbox_rows(api: APIClient, publisher: Any) -> None:
    response = api.post("/api/events/", {"type": "account.created", "data": {"user_id": publisher.pk}}, format="json")

    assert response.status_code == 202, response.json()
    event = Event.objects.get(pk=response.json()["id"])
    assert response.json()["status_url"] == f"/api/events/{event.pk}/"
    assert event.actor == "backend"
    assert event.publisher == publisher
    # The envelope plus one task per subscriber of account.created (email, analytics, in-app).
    assert sorted(event.outbox.values_list("kind", flat=True)) == ["envelope", "task", "task", "task"]


def test_repeated_idempotency_key_returns_the_first_event_and_writes_nothing(api: APIClient, publisher: Any) -> None:
    body = {"type": "video.liked", "data": {"user_id": publisher.pk, "video_id": "v1", "liked_by": "Bo"},
            "idempotency_key": "like-1"}

    first = api.post("/api/events/", body, format="json")
    again = api.post("/api/events/", body, format="json")

    assert (first.status_code, again.status_code) == (202, 200)
    assert again.json() == {**first.json(), "duplicate": True}
    assert Event.objects.count() == 1 and OutboxMessage.objects.count() == 3


def test_event_status_lists_each_delivery(api: APIClient, publisher: Any) -> None:
    event_id = api.post("/api/events/", {"type": "account.created", "data": {"user_id": publisher.pk}}, format="json").json()["id"]
    Delivery.objects.create(event_id=event_id, subscriber="transactional_email", channel="email", recipient="user:1", status="sent")

    body = api.get(f"/api/events/{event_id}/").json()

    assert body["type"] == "account.created" and body["published"] is False
    assert [(d["subscriber"], d["status"]) for d in body["deliveries"]] == [("transactional_email", "sent")]


@pytest.mark.parametrize(
    ("body", "error", "field"),
    [
        ({"type": "account.deleted", "data": {}}, "invalid_event", "type"),
        ({"type": "account.created", "data": {"user_id": "ada"}}, "invalid_event", "data.user_id"),
        ({"type": "account.created", "data": {}}, "invalid_event", "data.user_id"),
        ({"type": "account.created", "version": 9, "data": {"user_id": 1}}, "invalid_event", "version"),
        ({"type": "account.created", "data": [1, 2]}, "invalid_event", "data"),
        ({"data": {"user_id": 1}}, "invalid_request", "type"),
        ({"type": "password.reset_requested", "data": {"user_id": 1, "reset_url": "nope"}}, "invalid_event", "data.reset_url"),
    ],
)
def test_invalid_event_answers_400_naming_the_field(api: APIClient, body: dict[str, Any], error: str, field: str) -> None:
    response = api.post("/api/events/", body, format="json")

    assert response.status_code == 400
    assert response.json()["error"] == error
    assert field in response.json()["detail"]
    assert response.json()["message"]
    assert_nothing_changed()


def test_malformed_json_is_an_invalid_request(api: APIClient) -> None:
    response = api.post("/api/events/", data='{"type": "account.created", ', content_type="application/json")

    assert response.status_code == 400
    assert response.json()["error"] == "invalid_request"
    assert_nothing_changed()


@override_settings(CARILLON_MAX_EVENT_BYTES=1024)
def test_oversized_event_answers_413(api: APIClient) -> None:
    body = {"type": "account.created", "data": {"user_id": 1, "name": "x" * 2000}}

    response = api.post("/api/events/", data=json.dumps(body), content_type="application/json")

    assert response.status_code == 413
    assert response.json()["error"] == "payload_too_large"
    assert response.json()["detail"] == {"limit": 1024}
    assert_nothing_changed()


def test_anonymous_publisher_answers_401() -> None:
    response = APIClient().post("/api/events/", {"type": "account.created", "data": {"user_id": 1}}, format="json")

    assert response.status_code == 401
    assert response.json()["error"] == "not_authenticated"
    assert_nothing_changed()


def test_publisher_without_the_permission_answers_403(django_user_model: Any) -> None:
    client = APIClient()
    client.force_authenticate(django_user_model.objects.create_user("stranger"))

    response = client.post("/api/events/", {"type": "account.created", "data": {"user_id": 1}}, format="json")

    assert response.status_code == 403
    assert "publish_event" in response.json()["message"]
    assert_nothing_changed()


def client_of(user: Any) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=user).key}")
    return client


@pytest.fixture
def other_publisher(django_user_model: Any) -> Any:
    user = django_user_model.objects.create_user("another-backend")
    user.user_permissions.add(Permission.objects.get(codename="publish_event"))
    return user


RESET = "https://app.example.com/reset/s3cr3t-token"


def test_an_event_is_shown_to_its_publisher_and_operators_only(
    api: APIClient, publisher: Any, other_publisher: Any, django_user_model: Any
) -> None:
    event_id = api.post(
        "/api/events/", {"type": "password.reset_requested", "data": {"user_id": publisher.pk, "reset_url": RESET}},
        format="json",
    ).json()["id"]
    operator = django_user_model.objects.create_user("operator")
    operator.user_permissions.add(Permission.objects.get(codename="view_event"))

    own = api.get(f"/api/events/{event_id}/")
    others = client_of(other_publisher).get(f"/api/events/{event_id}/")
    operators = client_of(operator).get(f"/api/events/{event_id}/")

    assert own.status_code == 200 and own.json()["data"]["reset_url"] == RESET
    # Answered as for an event that does not exist: no data, no hint that it does.
    assert others.status_code == 404
    assert others.json()["error"] == "not_found"
    assert RESET not in others.content.decode()
    assert operators.status_code == 200


def test_an_event_published_by_the_project_itself_is_shown_to_operators_only(
    api: APIClient, publisher: Any
) -> None:
    event = event_publish(type="account.created", data={"user_id": publisher.pk})

    assert api.get(f"/api/events/{event.pk}/").status_code == 404


def test_idempotency_keys_are_per_publisher(api: APIClient, publisher: Any, other_publisher: Any) -> None:
    body = {"type": "account.created", "data": {"user_id": publisher.pk}, "idempotency_key": "signup-1"}

    mine = api.post("/api/events/", body, format="json")
    theirs = client_of(other_publisher).post("/api/events/", body, format="json")

    # The second publisher's event is its own, published, and not the first one's.
    assert (mine.status_code, theirs.status_code) == (202, 202)
    assert mine.json()["id"] != theirs.json()["id"]
    assert Event.objects.get(pk=theirs.json()["id"]).publisher == other_publisher
    assert OutboxMessage.objects.filter(event_id=theirs.json()["id"]).count() == 4


def test_the_same_key_with_another_request_answers_409_and_writes_nothing(
    api: APIClient, publisher: Any
) -> None:
    first = api.post(
        "/api/events/", {"type": "account.created", "data": {"user_id": publisher.pk}, "idempotency_key": "k-1"},
        format="json",
    )

    other = api.post(
        "/api/events/", {"type": "account.created", "data": {"user_id": publisher.pk, "name": "Ada"},
                         "idempotency_key": "k-1"},
        format="json",
    )

    assert other.status_code == 409
    assert other.json()["error"] == "idempotency_key_reused"
    assert other.json()["detail"]["event"] == first.json()["id"]
    assert Event.objects.count() == 1


def test_event_publish_from_django_code_keeps_its_own_keys(api: APIClient, publisher: Any) -> None:
    data = {"user_id": publisher.pk}
    first = event_publish(type="account.created", data=data, idempotency_key="welcome-1")
    again = event_publish(type="account.created", data=data, idempotency_key="welcome-1")
    through_the_api = api.post(
        "/api/events/", {"type": "account.created", "data": data, "idempotency_key": "welcome-1"}, format="json"
    )

    assert again.pk == first.pk and first.publisher is None
    assert through_the_api.status_code == 202 and through_the_api.json()["id"] != str(first.pk)


@pytest.mark.parametrize("user_id", [99999999999999999999, 2**63, 987654321])
def test_an_event_for_a_user_that_does_not_exist_answers_400_and_writes_nothing(
    api: APIClient, user_id: int
) -> None:
    response = api.post(
        "/api/events/", {"type": "account.created", "data": {"user_id": user_id}}, format="json"
    )

    assert response.status_code == 400
    assert response.json()["error"] == "invalid_event"
    assert "data.user_id" in response.json()["detail"]
    assert_nothing_changed()

