"""The rooms API through Django: enqueue, state, and the signed, idempotent webhook."""

import json

import pytest
from django.contrib.auth import get_user_model
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from rooms.models import Room, RoomMessage
from rooms.providers import chat_signature_valid
from sandbox.chat import chat_signature
from tests.unit.rooms.conftest import SentTasks

pytestmark = pytest.mark.django_db(transaction=True)

SECRET = "sandbox-chat-secret"


@pytest.fixture
def api() -> APIClient:
    user = get_user_model().objects.create_user(username="operator", password="x-not-used-x")
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=user).key}")
    return client


def webhook(client: APIClient, payload: dict[str, str], *, secret: str = SECRET) -> tuple[int, dict[str, str]]:
    body = json.dumps(payload).encode()
    response = client.post(
        "/api/webhooks/chat/", data=body, content_type="application/json",
        HTTP_X_CHAT_SIGNATURE=chat_signature(secret, body),
    )
    return response.status_code, response.json()


def test_sandbox_and_carillon_agree_on_the_signature() -> None:
    body = b'{"id": "chm_1"}'
    assert chat_signature_valid(body=body, signature=chat_signature(SECRET, body))
    assert not chat_signature_valid(body=body + b" ", signature=chat_signature(SECRET, body))


def test_enqueue_then_read_the_room(api: APIClient, room: Room, sent: SentTasks) -> None:
    created = [api.post(f"/api/rooms/{room.pk}/messages/", {"body": b}, format="json") for b in "ab"]

    assert [r.status_code for r in created] == [201, 201]
    state = api.get(f"/api/rooms/{room.pk}/").json()
    assert state["in_flight"]["sequence"] == 1
    assert state["queued"] == 1
    assert state["timeouts"] == 0


def test_enqueue_needs_a_token(room: Room) -> None:
    response = APIClient().post(f"/api/rooms/{room.pk}/messages/", {"body": "a"}, format="json")
    assert response.status_code == 401
    assert not RoomMessage.objects.exists()


def test_unknown_room_and_bad_body_answer_the_error_format(api: APIClient, room: Room, sent: SentTasks) -> None:
    missing = api.post("/api/rooms/999999/messages/", {"body": "a"}, format="json")
    invalid = api.post(f"/api/rooms/{room.pk}/messages/", {}, format="json")

    assert missing.status_code == 404
    assert missing.json()["error"] == "room_not_found"
    assert invalid.status_code == 400
    assert set(invalid.json()) == {"error", "message", "detail"}
    assert "body" in invalid.json()["detail"]


def test_forged_webhook_gets_403_and_changes_nothing(api: APIClient, room: Room, sent: SentTasks) -> None:
    api.post(f"/api/rooms/{room.pk}/messages/", {"body": "a"}, format="json")
    message = RoomMessage.objects.get()
    before = Room.objects.get(pk=room.pk)

    status, body = webhook(
        APIClient(),
        {"type": "message.delivered", "id": "chm_1", "idempotency_key": str(message.idempotency_key)},
        secret="not-the-secret",
    )

    assert status == 403
    assert body["error"] == "invalid_signature"
    after = Room.objects.get(pk=room.pk)
    assert (after.version, after.in_flight_id) == (before.version, message.pk)
    assert RoomMessage.objects.get().status == RoomMessage.Status.IN_FLIGHT


def test_signed_webhook_acks_once(api: APIClient, room: Room, sent: SentTasks) -> None:
    for body in "ab":
        api.post(f"/api/rooms/{room.pk}/messages/", {"body": body}, format="json")
    first = RoomMessage.objects.get(sequence=1)
    payload = {"type": "message.delivered", "id": "chm_1", "idempotency_key": str(first.idempotency_key)}

    answers = [webhook(APIClient(), payload) for _ in range(2)]

    assert [(s, b["status"]) for s, b in answers] == [(200, "applied"), (200, "ignored")]
    assert api.get(f"/api/rooms/{room.pk}/").json()["in_flight"]["sequence"] == 2
