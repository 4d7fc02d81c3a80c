"""PostgreSQL restarted under a running daphne and worker: while it is down every request
gets an answer to retry (503, a WebSocket close code), a send under way is neither lost
nor repeated, and once it is back the first request of each kind works, with no restart
of Carillon's processes."""

import asyncio
from typing import Any

import pytest
import requests
from django.conf import settings
from django.contrib.auth.models import Permission
from django.db import transaction
from django.test import Client
from rest_framework.authtoken.models import Token

from notifications import relay
from notifications.models import Delivery
from notifications.services.events import event_publish
from realtime.auth import realtime_token_create
from realtime.consumers import CLOSE_UNAVAILABLE
from sandbox.client import SandboxClient
from tests.integration.conftest import CeleryWorker, wait_until_settled
from tests.integration.realtime.clients import WsClient
from tests.integration.test_pipeline import RESET_URL, make_user, statuses
from tests.processes import ManagedProcess, needs_own_postgres, postgres_ctl, wait_for

pytestmark = [
    pytest.mark.integration,
    pytest.mark.django_db(transaction=True),
    needs_own_postgres,
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
        page = requests.get(f"{daphne_url}/admin/", cookies=session, timeout=15, allow_redirects=False)
        assert (page.status_code, page.headers["Retry-After"]) == (503, "5")
    finally:
        postgres_ctl("restart")

    # The first request of each kind after the restart works: the token's user read again,
    # the publish, the worker's deliveries, the live push.
    pushed = asyncio.run(published_and_pushed(daphne_url, api_token, realtime_token, publisher.pk))
    assert (pushed["type"], pushed["topic"]) == ("message", topic)
    sandbox.wait_for("email", 2)
    wait_until_settled(pipeline_worker)
    assert len(sandbox.received("email")) == 2  # one per accepted publish: none lost, none twice


def test_postgresql_stopped_while_a_send_is_under_way_loses_it_not_and_repeats_it_not(
    pipeline_worker: CeleryWorker, pipeline_settings: None, sandbox: SandboxClient
) -> None:
    user = make_user("pg-in-flight", "+15551230102")
    # The SMS takes 2 s at Twilio: PostgreSQL stops while it is under way, so the worker
    # cannot record what Twilio answered. No status callback: only asking Twilio, once the
    # database is back, can tell the retry that the first attempt went through.
    sandbox.set_knobs("sms", latency_ms=2000, callback_loss_rate=1.0)
    with transaction.atomic():
        event = event_publish(type="password.reset_requested", data={"user_id": user.pk, "reset_url": RESET_URL})
    wait_for(lambda: sandbox.inbox("sms")["in_flight"], "the sms request at Twilio")

    postgres_ctl("stop")
    try:
        sandbox.wait_for("sms", 1)  # Twilio took it while the worker could not write
        pipeline_worker.wait_for_log(f"security_sms for event {event.id}): ")  # its retry, put off
    finally:
        postgres_ctl("restart")

    wait_for(lambda: statuses(event) == {"security_sms": "sent", "transactional_email": "sent"}, "both sent")
    wait_until_settled(pipeline_worker)
    assert Delivery.objects.get(event=event, subscriber="security_sms").provider_response == {"recovered": True}
    assert (len(sandbox.received("sms")), len(sandbox.received("email"))) == (1, 1)


def test_the_relay_goes_on_after_postgresql_restarts(
    relay_process: ManagedProcess, pipeline_worker: CeleryWorker, pipeline_settings: None,
    sandbox: SandboxClient, monkeypatch: pytest.MonkeyPatch,
) -> None:
    user = make_user("pg-relay", "+15551230103")
    postgres_ctl("stop")
    try:
        relay_process.wait_for_log("relay: database unreachable", timeout=15)
    finally:
        postgres_ctl("restart")

    # An event whose rows only the relay can publish (the fast path paused, as after a
    # broker error): the relay that lived through the restart publishes them.
    monkeypatch.setattr(relay, "_fast_path_paused_until", float("inf"))
    with transaction.atomic():
        event = event_publish(type="account.created", data={"user_id": user.pk})
    wait_for(lambda: set(statuses(event).values()) == {"sent"}, "the relay's rows delivered")
    assert relay_process.process.poll() is None
    sandbox.wait_for("email", 1)
