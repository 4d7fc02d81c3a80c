"""Provider send rates: one token bucket in the suite's Redis, shared by every caller, and
the pause a provider asks for."""

import time
import uuid
from typing import Any

import pytest
from django.test import override_settings

from core.errors import ProviderTransientError
from core.send_rate import SendRate, SendRateExceeded, send_rate_pause, send_rate_take
from notifications.models import Delivery
from notifications.providers.base import SendItem
from notifications.providers.email import email_send, message_id
from notifications.providers.twilio.sender import sms_send
from sandbox.client import SandboxClient
from tests.factories import EventFactory, recipient_user

pytestmark = pytest.mark.integration


def _name() -> str:
    return f"test-{uuid.uuid4().hex[:8]}"


def password_reset_emails(users: list[Any]) -> list[SendItem]:
    """A password reset for the first user, and an email delivery of it to each user."""
    event = EventFactory.create(type="password.reset_requested", data={"user_id": users[0].pk, "reset_url": "https://x.example/r"})
    return [
        SendItem(event=event, delivery=Delivery.objects.create(event=event, subscriber="transactional_email", recipient=f"user:{user.pk}",
                                                  channel="email", user_id=user.pk), user=user, in_doubt_since=None)
        for user in users
    ]


def test_a_burst_goes_at_once_and_the_next_send_is_told_when_to_come_back() -> None:
    name, rate = _name(), SendRate(per_second=1, burst=5)
    for _ in range(5):
        send_rate_take(name=name, rate=rate, max_wait_seconds=0)
    with pytest.raises(SendRateExceeded) as over:
        send_rate_take(name=name, rate=rate, max_wait_seconds=0)
    assert 0 < over.value.retry_after <= 1


def test_sends_never_go_faster_than_the_rate() -> None:
    name, rate = _name(), SendRate(per_second=50, burst=1)
    started = time.monotonic()
    for _ in range(11):
        send_rate_take(name=name, rate=rate)
    # The first is the burst; ten more at 50/s cannot take less than 0.2 s.
    assert time.monotonic() - started >= 0.19


def test_more_than_a_burst_is_taken_a_burst_at_a_time() -> None:
    name, rate = _name(), SendRate(per_second=1000, burst=10)
    send_rate_take(name=name, rate=rate, count=35)  # would never fit in a bucket of 10
    with pytest.raises(SendRateExceeded):
        send_rate_take(name=name, rate=SendRate(per_second=0.01, burst=10), count=10, max_wait_seconds=0)


def test_a_providers_retry_after_pauses_every_sender_and_a_shorter_one_does_not_cut_it() -> None:
    name, rate = _name(), SendRate(per_second=100, burst=100)
    send_rate_pause(name=name, seconds=30)
    send_rate_pause(name=name, seconds=1)
    with pytest.raises(SendRateExceeded) as paused:
        send_rate_take(name=name, rate=rate, max_wait_seconds=5)
    assert paused.value.retry_after > 25


def test_without_redis_sends_go_ahead_unpaced() -> None:
    with override_settings(REDIS_URL="redis://127.0.0.1:9/0"):  # the discard port: nothing listens
        send_rate_pause(name="unreachable", seconds=30)
        send_rate_take(name="unreachable", rate=SendRate(per_second=0.01, burst=1), count=3, max_wait_seconds=0)


@pytest.mark.django_db
def test_twilios_429_pauses_for_as_long_as_its_retry_after_says(
    sandbox: SandboxClient, pipeline_settings: None
) -> None:
    # At one message per 5 s the sandbox answers the first request 429, Retry-After: 4.
    sandbox.set_knobs("sms", rate_limit_per_second=0.2)
    user = recipient_user("ada", phone_number="+15551230001")
    event = EventFactory.create(type="password.reset_requested", data={"user_id": user.pk, "reset_url": "https://x.example/r"})
    delivery = Delivery.objects.create(
        event=event, subscriber="security_sms", recipient=f"user:{user.pk}", channel="sms", user_id=user.pk
    )

    [result] = sms_send(items=[SendItem(event=event, delivery=delivery, user=user, in_doubt_since=None)])

    assert isinstance(result, ProviderTransientError) and result.retry_after == 4


@pytest.mark.django_db
@override_settings(CARILLON_SMTP_BUSY_PAUSE_SECONDS=7, EMAIL_BACKEND="django.core.mail.backends.smtp.EmailBackend")
def test_an_smtp_421_pauses_email_and_sends_nothing_more_on_that_connection(
    sandbox: SandboxClient, pipeline_settings: None
) -> None:
    # At one message per 5 s the sandbox answers the first message 421 ("try again later").
    sandbox.set_knobs("email", rate_limit_per_second=0.2)
    items = password_reset_emails([recipient_user(f"grace{n}") for n in range(3)])

    results = email_send(items=items)

    # SMTP has no Retry-After: the channel pauses for the configured time, and the rest
    # wait for it instead of each being refused in turn (a real server closes on 421).
    first, *rest = results
    assert isinstance(first, ProviderTransientError) and first.retry_after == 7
    assert all(isinstance(result, ProviderTransientError) and not result.in_doubt for result in rest)
    assert sandbox.inbox("email")["rate_limited"] == 1


@pytest.mark.django_db
def test_through_postmark_transactional_email_is_one_request_and_a_429_puts_it_off(
    sandbox: SandboxClient, pipeline_settings: None
) -> None:
    users = [recipient_user(f"hopper{n}") for n in range(3)]
    users[2].email = ""

    with override_settings(POSTMARK_SERVER_TOKEN="sandbox-postmark-token", POSTMARK_API_BASE_URL=sandbox.url):
        sandbox.set_knobs("email", rate_limit_per_second=1)
        first, again = password_reset_emails(users), password_reset_emails(users)
        sent = email_send(items=first)
        limited = email_send(items=again)

    assert [type(result).__name__ for result in sent] == ["SendResult", "SendResult", "ProviderPermanentError"]
    mails = sandbox.received("email")
    assert [(mail["to"], mail["stream"]) for mail in mails] == [(users[0].email, "outbound"), (users[1].email, "outbound")]
    assert mails[0]["message_id"] == message_id(first[0].delivery)
    assert sandbox.inbox("email")["requests"] == 1
    assert all(isinstance(result, ProviderTransientError) and result.retry_after for result in limited[:2])


@pytest.mark.django_db
def test_through_postmark_a_request_refused_for_its_rate_leaves_the_later_ones_unmade(
    sandbox: SandboxClient, pipeline_settings: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Batches of 2 (Postmark's are 500), at one request a second: the first request is taken,
    # the second refused (429), and the third not made: all wait for the pause.
    monkeypatch.setattr("notifications.providers.email.MAX_BATCH_MESSAGES", 2)
    users = [recipient_user(f"liskov{n}") for n in range(5)]
    items = password_reset_emails(users)
    sandbox.set_knobs("email", rate_limit_per_second=1)

    with override_settings(POSTMARK_SERVER_TOKEN="sandbox-postmark-token", POSTMARK_API_BASE_URL=sandbox.url):
        results = email_send(items=items)

    assert [type(result).__name__ for result in results] == ["SendResult"] * 2 + ["ProviderTransientError"] * 3
    assert all(result.retry_after and not result.in_doubt for result in results[2:])  # type: ignore[union-attr]
    assert [mail["to"] for mail in sandbox.received("email")] == [users[0].email, users[1].email]
    assert (sandbox.inbox("email")["requests"], sandbox.inbox("email")["rate_limited"]) == (1, 1)
