"""Rate limits against the real Redis: sign-ins lock out, refused credentials slow their
address, publishers and forged webhooks get 429 with Retry-After, signed webhooks never,
and every process shares the count."""

import asyncio
import json
import logging
import re
import secrets
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import redis
import requests
from channels.testing import HttpCommunicator
from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.test import Client
from django.urls import reverse
from rest_framework.authtoken.models import Token
from twilio.request_validator import RequestValidator

from config.asgi import application
from sandbox.chat import chat_signed_headers

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

PASSWORD = "right-password-123"


@pytest.fixture(autouse=True)
def _fresh_counters() -> Iterator[None]:
    # After too: a lockout of 127.0.0.1 left behind would refuse every later test's sign-in.
    client = redis.Redis.from_url(settings.CARILLON_THROTTLE_REDIS_URL)

    def forget() -> None:
        for key in client.scan_iter("carillon:throttle:*"):
            client.delete(key)

    forget()
    yield
    forget()
    client.close()


def make_user(*, staff: bool = False, publisher: bool = False) -> Any:
    user = get_user_model().objects.create_user(f"u{uuid.uuid4().hex[:8]}", password=PASSWORD, is_staff=staff)
    if publisher:
        user.user_permissions.add(Permission.objects.get(codename="publish_event"))
    return user


def token_header(user: Any) -> str:
    return f"Token {Token.objects.create(user=user).key}"


def log_in(url: str, username: str, password: str, address: str = "127.0.0.1") -> Any:
    return Client(REMOTE_ADDR=address).post(url, {"username": username, "password": password})


def assert_rate_limited(response: Any) -> None:
    assert response.status_code == 429, response.content
    body = response.json()
    retry_after = int(response.headers["Retry-After"])
    assert retry_after > 0
    assert body["error"] == "rate_limited"
    assert body["detail"] == {"retry_after": retry_after}
    assert f"try again in {retry_after} seconds" in body["message"]


def test_the_right_admin_password_after_thirty_wrong_ones_does_not_sign_in() -> None:
    admin = make_user(staff=True)
    for _ in range(30):
        log_in("/admin/login/", admin.username, "wrong")

    response = log_in("/admin/login/", admin.username, PASSWORD)

    assert_rate_limited(response)
    assert "sign-ins" in response.json()["message"]
    assert "_auth_user_id" not in response.client.session


def test_a_username_is_locked_out_from_every_address(settings: Any) -> None:
    settings.CARILLON_THROTTLE_RATES = {**settings.CARILLON_THROTTLE_RATES, "login_username": "3/15m"}
    user = make_user()
    for n in range(3):
        assert log_in("/live/login/", user.username, "wrong", address=f"10.0.0.{n}").status_code == 200

    assert_rate_limited(log_in("/live/login/", user.username, PASSWORD, address="10.0.0.99"))
    # Another user, from an address that guessed nothing, still signs in.
    assert log_in("/live/login/", make_user().username, PASSWORD, address="10.0.0.99").status_code == 302


def test_an_address_is_locked_out_for_every_username(settings: Any) -> None:
    settings.CARILLON_THROTTLE_RATES = {**settings.CARILLON_THROTTLE_RATES, "login_address": "3/15m"}
    for n in range(3):
        log_in("/live/login/", f"nobody-{n}", "wrong", address="10.0.1.1")
    user = make_user()

    assert_rate_limited(log_in("/live/login/", user.username, PASSWORD, address="10.0.1.1"))
    assert log_in("/live/login/", user.username, PASSWORD, address="10.0.1.2").status_code == 302


def test_behind_the_proxy_the_forwarded_client_address_is_what_gets_locked_out(settings: Any) -> None:
    settings.CARILLON_THROTTLE_RATES = {**settings.CARILLON_THROTTLE_RATES, "login_address": "2/15m"}
    settings.CARILLON_TRUSTED_PROXIES = 1
    proxy = Client(REMOTE_ADDR="10.9.9.9")
    for n in range(2):
        # A client-supplied first entry must not give each guess a fresh address.
        proxy.post("/live/login/", {"username": f"x{n}", "password": "wrong"},
                   HTTP_X_FORWARDED_FOR=f"1.2.3.{n}, 203.0.113.7")
    user = make_user()

    locked = proxy.post("/live/login/", {"username": user.username, "password": PASSWORD},
                        HTTP_X_FORWARDED_FOR="203.0.113.7")
    other = proxy.post("/live/login/", {"username": user.username, "password": PASSWORD},
                       HTTP_X_FORWARDED_FOR="203.0.113.8")

    assert_rate_limited(locked)
    assert other.status_code == 302


def test_failures_counted_in_one_process_lock_the_username_in_another(daphne_url: str) -> None:
    user = make_user(staff=True)
    for _ in range(5):  # the default: 5 failures per username in 15 minutes
        log_in("/admin/login/", user.username, "wrong")

    browser = requests.Session()
    form = browser.get(f"{daphne_url}/admin/login/", timeout=10)
    csrf = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', form.text)
    assert csrf is not None
    response = browser.post(
        f"{daphne_url}/admin/login/", timeout=10, allow_redirects=False,
        data={"username": user.username, "password": PASSWORD, "csrfmiddlewaretoken": csrf[1]},
        headers={"Referer": f"{daphne_url}/admin/login/"},
    )

    assert_rate_limited(response)


def test_random_api_tokens_lock_out_their_address_even_for_a_valid_token(settings: Any) -> None:
    settings.CARILLON_THROTTLE_RATES = {**settings.CARILLON_THROTTLE_RATES, "credential_failures": "3/10m"}
    publisher = make_user(publisher=True)
    guesser = Client(REMOTE_ADDR="10.0.2.1")
    for _ in range(3):
        refused = guesser.post("/api/events/", {}, HTTP_AUTHORIZATION=f"Token {secrets.token_hex(20)}")
        assert refused.status_code == 401

    valid = token_header(publisher)
    assert_rate_limited(guesser.get("/api/notifications/", HTTP_AUTHORIZATION=valid))
    assert Client(REMOTE_ADDR="10.0.2.2").get("/api/notifications/", HTTP_AUTHORIZATION=valid).status_code == 200


@pytest.mark.parametrize(
    ("url_name", "body", "user_kind"),
    [
        # user_id: the publisher's own (events naming a user that does not exist are refused).
        ("event-list", {"type": "account.created", "data": {"user_id": "self"}}, {"publisher": True}),
        ("realtime-publish", {"topic": "live:throttle", "event": "video.liked"}, {"staff": True}),
        ("realtime-token", {}, {}),
    ],
)
def test_a_publisher_past_its_rate_gets_429_with_retry_after(
    settings: Any, url_name: str, body: dict[str, Any], user_kind: dict[str, bool]
) -> None:
    settings.CARILLON_THROTTLE_RATES = {**settings.CARILLON_THROTTLE_RATES, "publish": "2/m", "realtime_token": "2/m"}
    user = make_user(**user_kind)
    client = Client(HTTP_AUTHORIZATION=token_header(user))
    url = reverse(url_name)
    if "data" in body and body["data"].get("user_id") == "self":
        body = {**body, "data": {"user_id": user.pk}}

    accepted = [client.post(url, body, content_type="application/json").status_code for _ in range(2)]
    refused = client.post(url, body, content_type="application/json")
    other = Client(HTTP_AUTHORIZATION=token_header(make_user(**user_kind)))

    assert all(status < 300 for status in accepted), accepted
    assert_rate_limited(refused)
    assert other.post(url, body, content_type="application/json").status_code < 300


@dataclass
class Answer:
    """What the ack receiver in front of Django answered, read like a test client's response."""

    status_code: int
    headers: dict[str, str]
    content: bytes

    def json(self) -> Any:
        return json.loads(self.content)


def webhook_post(path: str, address: str, *, signed: bool) -> Any:
    """POST a webhook as its provider would (signed) or as anyone else could (unsigned).
    The chat webhook's path with the owner's route (`?shard=&room=`) goes through the ack
    receiver daphne serves in front of Django; every other one through Django."""
    body = b'{"type": "message.read", "id": "chm_1"}'
    if path.startswith("/api/webhooks/twilio/"):
        params = {"MessageSid": "SM" + "a" * 32, "MessageStatus": "delivered"}
        signature = RequestValidator(settings.TWILIO_AUTH_TOKEN).compute_signature(
            settings.CARILLON_PUBLIC_URL + path, params) if signed else "forged"
        return Client(REMOTE_ADDR=address).post(path, params, HTTP_X_TWILIO_SIGNATURE=signature)
    headers = chat_signed_headers(settings.ROOMS_CHAT_WEBHOOK_SECRET if signed else "forged", body)
    if "?" not in path:
        return Client(REMOTE_ADDR=address).post(path, body, content_type="application/json", headers=headers)

    async def receiver() -> dict[str, Any]:
        communicator = HttpCommunicator(
            application, "POST", path, body=body,
            headers=[(b"content-type", b"application/json"),
                     *((name.lower().encode(), value.encode()) for name, value in headers.items())],
        )
        communicator.scope["client"] = (address, 40000)  # read when the application runs
        return await communicator.get_response()

    answer = asyncio.run(receiver())
    return Answer(answer["status"], {name.decode().title(): value.decode() for name, value in answer["headers"]},
                  answer["body"])


WEBHOOKS = ["/api/webhooks/twilio/999999/", "/api/webhooks/chat/", "/api/webhooks/chat/?shard=7&room=42"]


@pytest.mark.parametrize("path", WEBHOOKS)
def test_webhooks_that_fail_their_signature_get_429_per_address(settings: Any, path: str) -> None:
    settings.CARILLON_THROTTLE_RATES = {**settings.CARILLON_THROTTLE_RATES, "webhook": "3/m"}
    for _ in range(3):
        assert webhook_post(path, "10.0.3.1", signed=False).status_code == 403  # refused, and counted

    assert_rate_limited(webhook_post(path, "10.0.3.1", signed=False))
    assert webhook_post(path, "10.0.3.2", signed=False).status_code == 403


@pytest.mark.parametrize("path", WEBHOOKS)
def test_a_provider_s_signed_webhooks_are_never_refused_for_their_rate(settings: Any, path: str) -> None:
    # A chat platform acking a thousand messages a second from one address is the load
    # ordered delivery is built for, not a flood: only what fails its signature counts.
    settings.CARILLON_THROTTLE_RATES = {**settings.CARILLON_THROTTLE_RATES, "webhook": "3/m"}
    answers = [webhook_post(path, "10.0.3.3", signed=True).status_code for _ in range(6)]

    assert 429 not in answers and len(set(answers)) == 1, answers
    assert answers[0] < 500, answers


@pytest.mark.parametrize("path", WEBHOOKS)
def test_with_redis_down_a_forged_webhook_is_still_refused_and_a_signed_one_taken(
    settings: Any, caplog: pytest.LogCaptureFixture, path: str
) -> None:
    settings.CARILLON_THROTTLE_REDIS_URL = "redis://127.0.0.1:1/0"

    with caplog.at_level(logging.WARNING, logger="core.throttling"):
        forged = webhook_post(path, "10.0.3.4", signed=False).status_code
        signed = webhook_post(path, "10.0.3.4", signed=True).status_code

    assert forged == 403
    assert signed in (200, 404), signed  # taken: an event ignored, or a delivery unknown
    assert "rate limiter unreachable: refused webhook from 10.0.3.4 not counted" in caplog.text


def test_with_redis_down_publishers_go_through_and_sign_ins_wait(
    settings: Any, caplog: pytest.LogCaptureFixture
) -> None:
    settings.CARILLON_THROTTLE_REDIS_URL = "redis://127.0.0.1:1/0"
    publisher = make_user(publisher=True)

    with caplog.at_level(logging.WARNING, logger="core.throttling"):
        published = Client(HTTP_AUTHORIZATION=token_header(publisher)).post(
            "/api/events/", {"type": "account.created", "data": {"user_id": publisher.pk}},
            content_type="application/json",
        )
        login = log_in("/live/login/", publisher.username, PASSWORD)

    assert published.status_code == 202, published.content
    assert login.status_code == 503
    assert login.json()["error"] == "login_unavailable"
    assert "rate limiter unreachable" in caplog.text
