"""POST /api/realtime/token/ and /api/realtime/publish/."""

import asyncio
import uuid

import pytest
from django.contrib.auth import get_user_model
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from realtime.auth import realtime_token_user_id
from tests.integration.realtime.clients import WsClient, messages

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


def api_client(*, staff: bool) -> APIClient:
    user = get_user_model().objects.create_user(f"u{uuid.uuid4().hex[:8]}", is_staff=staff)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=user).key}")
    return client


def test_a_token_names_the_user_who_asked_for_it() -> None:
    client = api_client(staff=False)

    response = client.post("/api/realtime/token/")

    assert response.status_code == 200
    user = Token.objects.get(key=client._credentials["HTTP_AUTHORIZATION"].split()[1]).user
    assert realtime_token_user_id(response.json()["token"]) == user.pk


@pytest.mark.database_agnostic
def test_a_backend_publishes_over_http_and_a_websocket_client_gets_it(daphne_url: str) -> None:
    client = api_client(staff=True)
    token = client.post("/api/realtime/token/").json()["token"]
    topic = f"live:{uuid.uuid4().hex[:12]}"

    async def scenario() -> tuple[list, dict]:
        ws = await WsClient.connect(daphne_url, token)
        await ws.subscribe(topic)
        # The test client is synchronous Django: run it off the event loop.
        response = await asyncio.to_thread(
            client.post,
            "/api/realtime/publish/",
            {"topic": topic, "event": "video.liked", "data": {"v": 7}},
            format="json",
        )
        frames = [await ws.frame()]
        await ws.close()
        return frames, {"status": response.status_code, **response.json()}

    frames, response = asyncio.run(scenario())

    assert response == {"status": 202, "topic": topic, "id": 1}
    assert messages(frames) == [(topic, 1, {"v": 7})]


def test_publishing_needs_staff() -> None:
    response = api_client(staff=False).post(
        "/api/realtime/publish/", {"topic": "room:a", "event": "e"}, format="json"
    )

    assert response.status_code == 403
    assert response.json()["error"] == "permission_denied"
    assert response.json()["message"]


@pytest.mark.parametrize(
    "body",
    [
        {"topic": "nope", "event": "e"},
        {"topic": "room:a"},
        {"topic": "room:a", "event": "bad event"},
        {"topic": "room:a", "event": "e", "data": "str"},
        {"topic": "room:a", "event": "e", "data": [1, 2]},
    ],
)
def test_a_bad_publish_request_is_a_400_and_publishes_nothing(body: dict) -> None:
    import redis
    from django.conf import settings

    before = redis.Redis.from_url(settings.REALTIME_REDIS_URL).get("carillon:rt:seq:room:a")
    response = api_client(staff=True).post("/api/realtime/publish/", body, format="json")

    assert response.status_code == 400
    assert response.json()["error"] == "invalid_request"
    assert response.json()["detail"]
    assert redis.Redis.from_url(settings.REALTIME_REDIS_URL).get("carillon:rt:seq:room:a") == before


def test_a_message_over_the_size_limit_is_a_413_and_publishes_nothing(settings: object) -> None:
    import redis

    settings.REALTIME_MAX_MESSAGE_BYTES = 16 * 1024  # type: ignore[attr-defined]
    sequence = redis.Redis.from_url(settings.REALTIME_REDIS_URL)  # type: ignore[attr-defined]
    before = sequence.get("carillon:rt:seq:room:a")
    client = api_client(staff=True)

    too_large = client.post(
        "/api/realtime/publish/",
        {"topic": "room:a", "event": "e", "data": {"blob": "x" * 1_000_000}},
        format="json",
    )
    just_fits = client.post(
        "/api/realtime/publish/",
        {"topic": "room:a", "event": "e", "data": {"blob": "x" * 16_000}},
        format="json",
    )

    assert too_large.status_code == 413
    assert too_large.json()["error"] == "payload_too_large"
    assert too_large.json()["detail"]["limit"] == 16 * 1024
    assert just_fits.status_code == 202
    assert int(sequence.get("carillon:rt:seq:room:a") or 0) == int(before or 0) + 1
