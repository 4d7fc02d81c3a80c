"""Every /api/ answer has the error body `{"error", "message", "detail"}`: DRF views, plain
Django views, URLs no view answers, unparseable bodies and unexpected failures alike."""

import json
from typing import Any

import pytest
from asgiref.sync import async_to_sync
from django.db import OperationalError
from django.http import HttpRequest, HttpResponse
from django.test import AsyncClient, Client
from django.urls import include, path
from rest_framework.authtoken.models import Token

from notifications.models import FailedJob
from rooms.models import ChatProvider, Room
from rooms.services.enqueue import room_create

pytestmark = pytest.mark.django_db

DEEP_JSON = "[" * 30_000


@pytest.fixture
def staff(django_user_model: Any) -> Client:
    user = django_user_model.objects.create_user("ops", is_staff=True, is_superuser=True)
    return Client(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=user).key}")


def assert_error(response: Any, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.content[:300]
    assert response["Content-Type"] == "application/json"
    body = response.json()
    assert set(body) == {"error", "message", "detail"}
    assert body["error"] == code and body["message"] and isinstance(body["detail"], dict)
    return body


@pytest.mark.parametrize(
    ("items", "problem"),
    [
        ([1], "[0]: Invalid data. Expected a dictionary, but got int."),
        ([{"category": "social", "channel": "inapp", "enabled": True}, None], "[1]: This field may not be null."),
        ([{"category": "social", "channel": [], "enabled": "x"}], "[0].channel: Not a valid string."),
        ({"category": "social"}, 'Expected a list of items but got type "dict".'),
    ],
)
def test_an_invalid_preference_list_answers_which_item_is_wrong(staff: Client, items: Any, problem: str) -> None:
    response = staff.put("/api/preferences/", json.dumps(items), content_type="application/json")

    assert problem in assert_error(response, 400, "invalid_request")["message"]


@pytest.mark.parametrize(
    "errors",
    [{0: ["bad"]}, [{}, {"a": {3: ["bad"]}}], ["bad"], "bad", {"a": [{"b": ["bad"]}]}, [[["bad"]]]],
)
def test_validation_errors_of_any_shape_name_the_problem(errors: Any) -> None:
    from core.errors import validation_problems

    assert [problem.rsplit(": ", 1)[-1] for problem in validation_problems(errors)] == ["bad"]


@pytest.mark.parametrize(
    ("method", "url"),
    [
        ("post", "/api/events/"),
        ("put", "/api/preferences/"),
        ("put", "/api/preferences/digest/"),
        ("post", "/api/realtime/publish/"),
        ("post", "/api/rooms/{room}/messages/"),
        ("post", "/api/failed-jobs/{job}/discard/"),
    ],
)
def test_json_nested_deeper_than_the_parser_goes_is_an_invalid_request(staff: Client, method: str, url: str) -> None:
    url = url.format(job=failed_job().pk, room=room().pk)
    response = getattr(staff, method)(url, DEEP_JSON, content_type="application/json")

    assert_error(response, 400, "invalid_request")


def room() -> Room:
    ChatProvider.objects.get_or_create(name="chat")
    return room_create(provider_name="chat", recipient="+15550001")


def failed_job() -> FailedJob:
    return FailedJob.objects.create(task_name="t", queue="q", error_class="E", error_message="m")


@pytest.mark.parametrize("body", [[1], "reason", None])
def test_a_failed_job_action_whose_body_is_not_an_object_is_an_invalid_request(staff: Client, body: Any) -> None:
    job = failed_job()

    response = staff.post(f"/api/failed-jobs/{job.pk}/discard/", json.dumps(body), content_type="application/json")

    assert_error(response, 400, "invalid_request")
    job.refresh_from_db()
    assert job.state == "failed"


def test_a_deeply_nested_chat_webhook_is_an_invalid_request(settings: Any) -> None:
    from sandbox.chat import chat_signed_headers

    body = DEEP_JSON.encode()
    response = Client().post(
        "/api/webhooks/chat/", body, content_type="application/json",
        headers=chat_signed_headers(settings.ROOMS_CHAT_WEBHOOK_SECRET, body),
    )

    assert_error(response, 400, "invalid_request")


def test_a_body_that_is_not_json_is_an_invalid_request(staff: Client) -> None:
    for url in ("/api/events/", "/api/realtime/publish/", "/api/preferences/digest/"):
        method = staff.put if "preferences" in url else staff.post
        assert_error(method(url, "{not json", content_type="application/json"), 400, "invalid_request")


def test_multipart_is_an_unsupported_media_type(staff: Client) -> None:
    without_boundary = staff.post("/api/realtime/publish/", b"x", content_type="multipart/form-data")
    empty = staff.post(f"/api/rooms/{room().pk}/messages/", b"--b--\r\n", content_type="multipart/form-data; boundary=b")

    assert_error(without_boundary, 415, "unsupported_media_type")
    assert_error(empty, 415, "unsupported_media_type")


@pytest.mark.parametrize("method", ["get", "post", "put", "patch", "delete"])
def test_an_api_url_without_its_trailing_slash_names_the_right_one(staff: Client, method: str) -> None:
    sent = None if method == "get" else "{}"
    response = getattr(staff, method)("/api/events", sent, content_type="application/json")

    body = assert_error(response, 404, "not_found")
    assert "/api/events/" in body["message"]


def test_realtime_urls_end_with_a_slash_like_every_other_api_url(staff: Client) -> None:
    assert staff.post("/api/realtime/token/").status_code == 200
    assert "/api/realtime/token/" in assert_error(staff.post("/api/realtime/token"), 404, "not_found")["message"]


def test_an_unknown_api_url_answers_json_not_found(staff: Client) -> None:
    assert_error(staff.get("/api/no-such-thing/"), 404, "not_found")
    assert_error(Client().get("/api/no-such-thing"), 404, "not_found")


def test_a_missing_object_answers_not_found(staff: Client) -> None:
    assert_error(staff.get("/api/events/00000000-0000-0000-0000-000000000000/"), 404, "not_found")
    assert_error(staff.post("/api/failed-jobs/999999/replay/"), 404, "not_found")


def test_a_method_not_allowed_answers_json_with_allow(staff: Client) -> None:
    plain = assert_error(staff.get("/api/webhooks/twilio/1/"), 405, "method_not_allowed")
    drf = assert_error(staff.delete("/api/events/"), 405, "method_not_allowed")

    assert "POST" in plain["message"] and "POST" in drf["message"]


def test_unauthenticated_and_forbidden_answer_their_codes(django_user_model: Any) -> None:
    user = django_user_model.objects.create_user("plain")
    normal = Client(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=user).key}")

    assert_error(Client().get("/api/preferences/"), 401, "not_authenticated")
    assert_error(normal.post("/api/realtime/publish/", {}), 403, "permission_denied")


def _explode(request: HttpRequest) -> HttpResponse:
    raise RuntimeError("secret internals: password=hunter2")


def _database_gone(request: HttpRequest) -> HttpResponse:
    raise OperationalError('connection failed: FATAL:  sorry, too many clients already')


urlpatterns = [
    path("api/explode/", _explode),
    path("api/database-gone/", _database_gone),
    path("database-gone/", _database_gone),
    path("", include("config.urls")),
]


@pytest.mark.urls(__name__)
def test_an_unexpected_failure_answers_internal_error_without_its_text(staff: Client) -> None:
    client = Client(raise_request_exception=False)

    response = client.get("/api/explode/")

    body = assert_error(response, 500, "internal_error")
    assert "hunter2" not in response.content.decode() and "RuntimeError" not in body["message"]


@pytest.mark.urls(__name__)
@pytest.mark.parametrize("handler", ["wsgi", "asgi"])
def test_a_database_out_of_reach_answers_unavailable_to_retry(handler: str) -> None:
    # Down, restarting or out of connections: the request may succeed a moment later.
    # Both handlers: daphne serves the API through Django's async one.
    response: Any
    if handler == "wsgi":
        response = Client(raise_request_exception=False).post("/api/database-gone/")
    else:
        response = async_to_sync(AsyncClient(raise_request_exception=False).post)("/api/database-gone/")

    body = assert_error(response, 503, "unavailable")
    assert response["Retry-After"] == "5" and "clients" not in body["message"]


@pytest.mark.urls(__name__)
def test_a_page_whose_database_is_out_of_reach_answers_503_to_retry_too() -> None:
    # The admin or the live page while PostgreSQL restarts: not Django's "Server Error (500)".
    response = Client(raise_request_exception=False).get("/database-gone/")

    assert (response.status_code, response["Retry-After"]) == (503, "5")
    assert response["Content-Type"].startswith("text/plain") and b"retry" in response.content


def test_the_event_stream_answers_other_methods_with_json_405(staff: Client) -> None:
    response = Client(enforce_csrf_checks=True).post("/events/?topic=room:lobby")

    assert assert_error(response, 405, "method_not_allowed")["message"] == "POST is not allowed on this URL: use GET"
    assert response["Allow"] == "GET"


def test_pages_outside_the_api_keep_html_errors(staff: Client) -> None:
    response = Client().get("/no-such-page/")

    assert response.status_code == 404 and "application/json" not in response["Content-Type"]



