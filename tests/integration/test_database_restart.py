"""PostgreSQL restarted under a running daphne and worker: while it is down every request
gets an answer to retry (503, a WebSocket close code), and once it is back the first
request of each kind works, with no restart of Carillon's processes."""

import asyncio
import os
from typing import Any

import pytest
import requests
from django.conf import settings
from django.contrib.auth.models import Permission
from django.db import connection, connections
from django.test import Client
from rest_framework.authtoken.models import Token

from realtime.auth import realtime_token_create
from realtime.consumers import CLOSE_UNAVAILABLE
from sandbox.client import SandboxClient
from tests.integration.conftest import CeleryWorker, wait_until_settled
from tests.integration.realtime.clients import WsClient
from tests.integration.test_pipeline import make_user
from tests.processes import postgres_ctl

pytestmark = [
    pytest.mark.integration,
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(
        connection.vendor != "postgresql" or not os.environ.get("CARILLON_TEST_POSTGRES_DIR"),
        reason="restarts the suite's own PostgreSQL (platform/test's PostgreSQL pass)",
    ),
]


def publish(daphne_url: str, token: str, user_id: int) -> requests.Response:
    return requests.post(
        f"{daphne_url}/api/events/", json={"type": "account.created", "data": {"user_id": user_id}},
        headers={"Authorization": f"Token {token}"}, timeout=15,
    )


async def close_code(daphne_url: str, realtime_token: str | None = None, cookies: dict[str, str] | None = None) -> int | None:
    client = await WsClient.connect(daphne_url, realtime_token, cookies)
    try:
        return await client.close_code()
    finally:
        await client.close()


async def published_and_pushed(daphne_url: str, api_token: str, realtime_token: str, user_id: int) -> dict[str, Any]:
    """Connect with a token (daphne reads the token's user), subscribe to the user's topic,
    publish an event through the API and return the live push it brought."""
    client = await WsClient.connect(daphne_url, realtime_token)
    try:
        assert (await client.subscribe(f"user:{user_id}"))[-1]["type"] == "subscribed"
        published = await asyncio.to_thread(publish, daphne_url, api_token, user_id)
        assert published.status_code == 202, published.text
        return await client.frame()
    finally:
        await client.close()


def test_postgresql_restarted_under_daphne_and_a_worker(
    daphne_url: str, pipeline_worker: CeleryWorker, sandbox: SandboxClient
) -> None:
    publisher = make_user("pg-publisher", "+15551230101")
    publisher.user_permissions.add(Permission.objects.get(codename="publish_event"))
    api_token = Token.objects.create(user=publisher).key
    realtime_token = realtime_token_create(user_id=publisher.pk)
    topic = f"user:{publisher.pk}"
    browser = Client()
    browser.force_login(publisher)
    session = {settings.SESSION_COOKIE_NAME: browser.cookies[settings.SESSION_COOKIE_NAME].value}
    # Before: daphne's and the worker's database connections are open and in use.
    pushed = asyncio.run(published_and_pushed(daphne_url, api_token, realtime_token, publisher.pk))
    assert (pushed["type"], pushed["topic"]) == ("message", topic)
    sandbox.wait_for("email", 1)

    postgres_ctl("stop")
    try:
        down = publish(daphne_url, api_token, publisher.pk)
        assert down.status_code == 503, down.text
        assert down.json()["error"] == "unavailable" and int(down.headers["Retry-After"]) > 0
        stream = requests.get(f"{daphne_url}/events/?topic={topic}&token={realtime_token}", timeout=15)
        assert (stream.status_code, stream.json()["error"]) == (503, "unavailable")
        assert asyncio.run(close_code(daphne_url, realtime_token)) == CLOSE_UNAVAILABLE
        assert asyncio.run(close_code(daphne_url, cookies=session)) == CLOSE_UNAVAILABLE
    finally:
        postgres_ctl("restart")
    connections.close_all()  # this process's own, opened before the restart

    # The first request of each kind after the restart works: the token's user read again,
    # the publish, the worker's deliveries, the live push.
    pushed = asyncio.run(published_and_pushed(daphne_url, api_token, realtime_token, publisher.pk))
    assert (pushed["type"], pushed["topic"]) == ("message", topic)
    sandbox.wait_for("email", 2)
    wait_until_settled(pipeline_worker)
    assert len(sandbox.received("email")) == 2  # one per accepted publish: none lost, none twice
