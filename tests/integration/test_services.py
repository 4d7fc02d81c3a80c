"""The real services are reachable through Django, both Celery apps and daphne."""

import platform
from typing import Any

import pytest
import requests
from django.test import Client, override_settings

from config.background import app as background_app
from config.background import ping as background_ping
from config.celery import app as critical_app
from config.celery import ping as critical_ping
from tests.integration.test_throttling import make_user, token_header

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


def test_readyz_reports_every_service_ready() -> None:
    response = Client().get("/readyz")

    assert response.status_code == 200, response.json()
    assert {name: check["ok"] for name, check in response.json()["checks"].items()} == {
        "database": True,
        "rabbitmq": True,
        "redis": True,
    }


@override_settings(REDIS_URL="redis://127.0.0.1:1/0")
def test_readyz_answers_503_and_tells_anyone_only_which_service_is_down() -> None:
    response = Client().get("/readyz")

    assert response.status_code == 503
    assert response.json() == {
        "status": "unavailable",
        "checks": {"database": {"ok": True}, "rabbitmq": {"ok": True}, "redis": {"ok": False}},
    }


@override_settings(REDIS_URL="redis://127.0.0.1:1/0", CARILLON_METRICS_TOKEN="scrape-token")
def test_readyz_tells_an_operator_why_a_service_is_down(django_user_model: Any) -> None:
    staff = Client()
    staff.force_login(django_user_model.objects.create_user("ops", is_staff=True))
    scraper = Client(headers={"Authorization": "Bearer scrape-token"})

    for response in (staff.get("/readyz"), scraper.get("/readyz")):
        assert response.status_code == 503
        redis_check = response.json()["checks"]["redis"]
        assert redis_check["ok"] is False
        assert "Connection" in redis_check["error"]
        assert redis_check["ms"] >= 0


def test_critical_app_round_trip_through_rabbitmq(critical_worker: object) -> None:
    assert critical_app.conf.broker_url.startswith("amqp://")

    answer = critical_ping.delay().get(timeout=30)

    assert answer["app"] == "critical"
    assert answer["python"] == platform.python_version()


def test_background_app_round_trip_through_redis(background_worker: object) -> None:
    assert background_app.conf.broker_url.startswith("redis://")

    answer = background_ping.delay().get(timeout=30)

    assert answer["app"] == "background"
    assert answer["python"] == platform.python_version()


def test_daphne_serves_django_and_reports_ready(daphne_url: str) -> None:
    health = requests.get(f"{daphne_url}/healthz", timeout=5)
    ready = requests.get(f"{daphne_url}/readyz", timeout=10)
    schema = requests.get(f"{daphne_url}/api/schema/", timeout=10)

    # daphne started at all: the standard library's platform module was not shadowed.
    # The answer tells nothing (no versions) to whoever asks.
    assert health.json() == {"status": "ok"}
    assert ready.status_code == 200, ready.text
    assert schema.status_code == 200
    assert "openapi" in schema.text


@pytest.mark.parametrize(
    ("content_type", "status", "error"),
    [("multipart/form-data", 415, "unsupported_media_type"), ("application/x-www-form-urlencoded", 400, "invalid_request")],
)
def test_a_form_body_reaches_the_application_unparsed_by_daphnes_server(
    daphne_url: str, content_type: str, status: int, error: str
) -> None:
    # Twisted used to parse form bodies itself, on the thread every connection of the
    # process shares, for nothing (daphne hands the raw body on): a malformed multipart
    # body (no boundary) got its bare 400 instead of the API's error body, and a large one
    # stalled the process for seconds. The application answers: it refuses multipart, and
    # reads the form it accepts (its answer names the field the body got wrong).
    publisher = make_user(publisher=True)
    response = requests.post(
        f"{daphne_url}/api/events/", data=b"type=account.created&data=not-an-object",
        headers={"Content-Type": content_type, "Authorization": token_header(publisher)}, timeout=10,
    )

    assert (response.status_code, response.json()["error"]) == (status, error), response.text
