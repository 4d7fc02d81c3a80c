"""The rooms API through Django: enqueue, state, and the signed webhook, each handing its
input to the room's shard owner (captured here: the owner is tested on its own)."""

import hashlib
import hmac
import json
import time
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.test import override_settings
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from core.errors import ApplicationError
from rooms.exceptions import RoomNotFoundError
from rooms.models import Room, RoomMessage, RoomSequence
from rooms.providers import chat_webhook_verify
from rooms.services.enqueue import room_message_enqueue
from sandbox.chat import chat_signed_headers
from tests.unit.rooms.conftest import Inputs, owner_puts_in_flight

pytestmark = pytest.mark.django_db(transaction=True)

SECRET = "sandbox-chat-secret"


def client_of(username: str, *permissions: str) -> APIClient:
    user = get_user_model().objects.create_user(username=username, password="x-not-used-x")
    user.user_permissions.add(*(Permission.objects.get(codename=codename) for codename in permissions))
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=user).key}")
    return client


@pytest.fixture
def api(room: Room) -> APIClient:
    """The integration that owns the room."""
    client = client_of("integration")
    Room.objects.filter(pk=room.pk).update(owner=get_user_model().objects.get(username="integration"))
    return client


def post_webhook(body: bytes, headers: dict[str, str]) -> tuple[int, dict[str, Any]]:
    extra = {f"HTTP_{name.upper().replace('-', '_')}": value for name, value in headers.items()}
    response = APIClient().post("/api/webhooks/chat/", data=body, content_type="application/json", **extra)
    return response.status_code, response.json()


def webhook(
    client: APIClient, payload: object, *, secret: str = SECRET, timestamp: int | None = None
) -> tuple[int, dict[str, Any]]:
    body = json.dumps(payload).encode()
    return post_webhook(body, chat_signed_headers(secret, body, timestamp))


def verifies(body: bytes, headers: dict[str, str]) -> bool:
    try:
        chat_webhook_verify(
            body=body, signature=headers["X-Chat-Signature"], timestamp=headers["X-Chat-Timestamp"]
        )
    except ApplicationError:
        return False
    return True


def test_sandbox_and_carillon_agree_on_the_signature() -> None:
    body = b'{"id": "chm_1"}'
    headers = chat_signed_headers(SECRET, body)
    assert verifies(body, headers)
    assert not verifies(body + b" ", headers)
    assert not verifies(body, {**headers, "X-Chat-Timestamp": str(int(headers["X-Chat-Timestamp"]) + 1)})


def test_enqueue_then_read_the_room(api: APIClient, room: Room, sent: Inputs) -> None:
    created = [api.post(f"/api/rooms/{room.pk}/messages/", {"body": b}, format="json") for b in "ab"]

    assert [r.status_code for r in created] == [202, 202]
    assert [r.json()["duplicate"] for r in created] == [False, False]
    state = api.get(f"/api/rooms/{room.pk}/").json()
    assert (state["in_flight"], state["queued"], state["timeouts"]) == (None, 2, 0)  # until its owner acts
    handed = sent.of_kind("enqueued")
    # The room's fields come back with the counter's increment: the owner sends by them.
    assert [(i["room"], i["sequence"], i["body"], i["shard"], i["provider"], i["recipient"]) for i in handed] == [
        (room.pk, 1, "a", room.shard, room.provider_id, room.recipient),
        (room.pk, 2, "b", room.shard, room.provider_id, room.recipient)]
    assert {shard for shard, _ in sent.calls} == {room.shard}


def test_an_enqueue_into_a_room_that_does_not_exist_writes_nothing(room: Room, sent: Inputs) -> None:
    # The view checks the room first; the service meets a missing room when it is
    # deleted meanwhile, or called by the project's own code with a stale id.
    missing = room.pk + 1000
    with pytest.raises(RoomNotFoundError):
        room_message_enqueue(room_id=missing, body="a")
    assert not RoomSequence.objects.filter(room_id=missing).exists()
    assert not RoomMessage.objects.exists()
    assert sent.calls == []


def test_enqueue_needs_a_token(room: Room) -> None:
    response = APIClient().post(f"/api/rooms/{room.pk}/messages/", {"body": "a"}, format="json")
    assert response.status_code == 401
    assert not RoomMessage.objects.exists()


def test_unknown_room_and_bad_body_answer_the_error_format(api: APIClient, room: Room, sent: Inputs) -> None:
    missing = api.post("/api/rooms/999999/messages/", {"body": "a"}, format="json")
    invalid = api.post(f"/api/rooms/{room.pk}/messages/", {}, format="json")

    assert missing.status_code == 404
    assert missing.json()["error"] == "room_not_found"
    assert invalid.status_code == 400
    assert set(invalid.json()) == {"error", "message", "detail"}
    assert "body" in invalid.json()["detail"]


def test_forged_webhook_gets_403_and_changes_nothing(api: APIClient, room: Room, sent: Inputs) -> None:
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
    assert sent.of_kind("ack") == []
    assert Room.objects.get(pk=room.pk).version == before.version


def test_a_signed_webhook_is_handed_to_the_room_s_owner_each_time(api: APIClient, room: Room, sent: Inputs) -> None:
    for body in "ab":
        api.post(f"/api/rooms/{room.pk}/messages/", {"body": body}, format="json")
    first = RoomMessage.objects.get(sequence=1)
    owner_puts_in_flight(first)
    payload = {"type": "message.delivered", "id": "chm_1", "idempotency_key": str(first.idempotency_key)}

    answers = [webhook(APIClient(), payload) for _ in range(2)]

    # The owner ignores the repeat (rooms/machine.py); the web process cannot tell.
    assert answers == [(202, {"status": "accepted", "message": first.pk})] * 2
    ack = {"kind": "ack", "shard": room.shard, "room": room.pk, "key": str(first.idempotency_key),
           "provider_message_id": "chm_1"}
    assert sent.of_kind("ack") == [ack, ack]


def test_an_ack_for_no_message_is_ignored(room: Room, sent: Inputs) -> None:
    payload = {"type": "message.delivered", "idempotency_key": "6f1c7a52-2d55-4c1e-9b1e-2f8f3c1b8a12"}

    assert webhook(APIClient(), payload) == (200, {"status": "ignored",
                                                   "reason": "no message has this idempotency key"})
    assert sent.calls == []


def in_flight_message(api: APIClient, room: Room) -> RoomMessage:
    api.post(f"/api/rooms/{room.pk}/messages/", {"body": "a"}, format="json")
    message = RoomMessage.objects.get(room=room)
    owner_puts_in_flight(message)
    return message


def assert_still_in_flight(room: Room, message: RoomMessage, sent: Inputs) -> None:
    """Nothing reached the owner, so nothing can have changed."""
    assert sent.of_kind("ack") == []
    assert Room.objects.get(pk=room.pk).in_flight_id == message.pk


def test_a_captured_ack_replayed_later_is_refused(api: APIClient, room: Room, sent: Inputs) -> None:
    message = in_flight_message(api, room)
    payload = {"type": "message.delivered", "id": "chm_1", "idempotency_key": str(message.idempotency_key)}

    status, body = webhook(APIClient(), payload, timestamp=int(time.time()) - 301)

    assert status == 403
    assert body["error"] == "invalid_timestamp"
    assert_still_in_flight(room, message, sent)


def test_an_ack_signed_without_a_timestamp_is_refused(api: APIClient, room: Room, sent: Inputs) -> None:
    message = in_flight_message(api, room)
    body = json.dumps({"type": "message.delivered", "idempotency_key": str(message.idempotency_key)}).encode()
    # The body alone, signed as before timestamps: valid forever once captured.
    signature = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()

    status, answer = post_webhook(body, {"X-Chat-Signature": signature})

    assert status == 403
    assert answer["error"] == "invalid_timestamp"
    assert_still_in_flight(room, message, sent)


@override_settings(ROOMS_CHAT_WEBHOOK_SECRET="")
def test_without_a_secret_no_ack_is_accepted(api: APIClient, room: Room, sent: Inputs) -> None:
    message = in_flight_message(api, room)
    payload = {"type": "message.delivered", "idempotency_key": str(message.idempotency_key)}

    status, body = webhook(APIClient(), payload, secret="")

    assert status == 403
    assert body["error"] == "invalid_signature"
    assert_still_in_flight(room, message, sent)


KEY = "6f1c7a52-2d55-4c1e-9b1e-2f8f3c1b8a11"


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"type": "message.delivered", "idempotency_key": "not-a-uuid"}, "idempotency_key"),
        ({"type": "message.delivered", "idempotency_key": 12}, "idempotency_key"),
        ({"type": "message.delivered", "idempotency_key": {"a": 1}}, "idempotency_key"),
        ({"type": "message.delivered", "idempotency_key": None}, "idempotency_key"),
        ({"type": "message.delivered"}, "idempotency_key"),
        ({"type": ["message.delivered"], "idempotency_key": KEY}, "type"),
        ({"type": 7, "idempotency_key": KEY}, "type"),
        ({"idempotency_key": KEY}, "type"),
        ({"type": "message.delivered", "idempotency_key": KEY, "id": {"x": 1}}, "id"),
        ({"type": "message.delivered", "idempotency_key": KEY, "id": True}, "id"),
        ({"type": "message.delivered", "idempotency_key": KEY, "id": "x" * 256}, "id"),
        ([{"type": "message.delivered", "idempotency_key": KEY}], "body"),
        ("message.delivered", "body"),
        (42, "body"),
        (None, "body"),
    ],
)
def test_a_signed_webhook_with_a_bad_body_answers_400(
    api: APIClient, room: Room, sent: Inputs, payload: object, field: str
) -> None:
    message = in_flight_message(api, room)

    status, body = webhook(APIClient(), payload)

    assert status == 400
    assert body["error"] == "invalid_request"
    assert field in body["detail"]
    assert body["message"]
    assert_still_in_flight(room, message, sent)


@pytest.mark.parametrize("raw", [b"\xff\xfe{}", b'{"type": "message.delivered", ', b""])
def test_a_signed_webhook_that_is_not_json_answers_400(raw: bytes, room: Room) -> None:
    status, body = post_webhook(raw, chat_signed_headers(SECRET, raw))

    assert status == 400
    assert body["error"] == "invalid_request"


@pytest.mark.parametrize(
    "headers",
    [
        {"X-Chat-Signature": "sha256=\u00e9t\u00e9", "X-Chat-Timestamp": str(int(time.time()))},
        {"X-Chat-Signature": "sha256=00", "X-Chat-Timestamp": "\u00e9"},
        {"X-Chat-Signature": "sha256=00", "X-Chat-Timestamp": "9" * 5000},
        {"X-Chat-Signature": "sha256=00", "X-Chat-Timestamp": "-5"},
        {},
    ],
)
def test_webhook_headers_of_any_shape_answer_403(headers: dict[str, str], room: Room) -> None:
    status, body = post_webhook(b"{}", headers)

    assert status == 403
    assert body["error"] in {"invalid_signature", "invalid_timestamp"}


def test_a_stranger_can_neither_read_a_room_nor_send_into_it(room: Room, sent: Inputs) -> None:
    stranger = client_of("stranger")

    read = stranger.get(f"/api/rooms/{room.pk}/")
    send = stranger.post(f"/api/rooms/{room.pk}/messages/", {"body": "spam"}, format="json")
    missing = stranger.get("/api/rooms/999999/")

    # Answered as a room that does not exist: ids are sequential, a 403 would confirm it.
    assert (read.status_code, send.status_code) == (404, 404)
    assert read.json()["error"] == send.json()["error"] == missing.json()["error"] == "room_not_found"
    assert room.recipient not in read.content.decode()
    assert not RoomMessage.objects.exists()
    assert sent.calls == []


def test_an_operator_with_view_room_reads_any_room_but_sends_nothing(room: Room, sent: Inputs) -> None:
    operator = client_of("watcher", "view_room")

    read = operator.get(f"/api/rooms/{room.pk}/")
    send = operator.post(f"/api/rooms/{room.pk}/messages/", {"body": "hi"}, format="json")

    assert read.status_code == 200 and read.json()["recipient"] == room.recipient
    assert send.status_code == 403
    assert send.json()["error"] == "permission_denied"
    assert not RoomMessage.objects.exists()


def test_an_operator_with_send_room_message_sends_into_any_room(room: Room, sent: Inputs) -> None:
    operator = client_of("sender", "send_room_message")

    send = operator.post(f"/api/rooms/{room.pk}/messages/", {"body": "hi"}, format="json")

    assert send.status_code == 202
    assert RoomMessage.objects.get().body == "hi"


def test_a_retried_post_with_the_same_key_enqueues_once(api: APIClient, room: Room, sent: Inputs) -> None:
    body = {"body": "your code is 1234", "idempotency_key": "otp-1"}

    first = api.post(f"/api/rooms/{room.pk}/messages/", body, format="json")
    again = api.post(f"/api/rooms/{room.pk}/messages/", body, format="json")

    assert (first.status_code, again.status_code) == (202, 200)
    assert again.json() == {**first.json(), "duplicate": True}
    assert RoomMessage.objects.count() == 1
    assert len(sent.calls) == 1


def test_the_same_key_for_another_message_answers_409(api: APIClient, room: Room, sent: Inputs) -> None:
    first = api.post(f"/api/rooms/{room.pk}/messages/", {"body": "a", "idempotency_key": "k"}, format="json")

    other = api.post(f"/api/rooms/{room.pk}/messages/", {"body": "b", "idempotency_key": "k"}, format="json")

    assert other.status_code == 409
    assert other.json()["error"] == "idempotency_key_reused"
    assert other.json()["detail"]["message"] == first.json()["id"]
    assert list(RoomMessage.objects.values_list("body", flat=True)) == ["a"]


def test_idempotency_keys_are_per_caller(api: APIClient, room: Room, sent: Inputs) -> None:
    operator = client_of("sender", "send_room_message")
    body = {"body": "same", "idempotency_key": "shared-key"}

    mine = api.post(f"/api/rooms/{room.pk}/messages/", body, format="json")
    theirs = operator.post(f"/api/rooms/{room.pk}/messages/", body, format="json")

    assert (mine.status_code, theirs.status_code) == (202, 202)
    assert mine.json()["id"] != theirs.json()["id"]
    assert RoomMessage.objects.count() == 2


def test_with_the_broker_down_an_enqueue_is_committed_and_an_ack_answers_503(
    api: APIClient, room: Room, monkeypatch: pytest.MonkeyPatch
) -> None:
    from rooms.services import acks, enqueue

    def broker_down(*args: object, **kwargs: object) -> None:
        raise ConnectionRefusedError("[Errno 111] Connection refused")

    for module in (acks, enqueue):
        monkeypatch.setattr(module, "shard_publish", broker_down)
    response = api.post(f"/api/rooms/{room.pk}/messages/", {"body": "a"}, format="json")
    message = RoomMessage.objects.get()

    status, answer = webhook(APIClient(), {"type": "message.delivered", "idempotency_key": str(message.idempotency_key)})

    # Committed: the owner finds it on its periodic check. The ack was not handed over:
    # the platform is told to send it again.
    assert response.status_code == 202
    assert (status, answer["error"]) == (503, "owner_unreachable")


@override_settings(DATA_UPLOAD_MAX_MEMORY_SIZE=1024)
def test_an_oversized_webhook_answers_413_in_the_error_format(room: Room) -> None:
    raw = json.dumps({"type": "message.delivered", "padding": "x" * 2000}).encode()

    status, body = post_webhook(raw, chat_signed_headers(SECRET, raw))

    assert status == 413
    assert body["error"] == "payload_too_large"
