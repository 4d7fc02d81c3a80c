"""A process keeps its SMTP session between sends, and never loses an email to a session
that died while kept. Real SMTP server (the sandbox's)."""

import itertools
import smtplib
import socket
import time
from datetime import timedelta
from typing import Any

import pytest
import requests
from django.core.mail import get_connection
from django.test import override_settings
from django.utils import timezone

from core.errors import ProviderTransientError
from notifications.digests import digest_period_end, digest_prepare, digest_send
from notifications.models import Notification
from notifications.providers import email
from notifications.providers.base import SendResult
from notifications.providers.email import email_send
from sandbox.client import SandboxClient
from tests.factories import recipient_user
from tests.integration.test_send_rate import password_reset_emails
from tests.processes import ManagedProcess, free_port, python

pytestmark = [pytest.mark.integration, pytest.mark.django_db]

SMTP_BACKEND = "django.core.mail.backends.smtp.EmailBackend"


@pytest.fixture
def connects(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, int]]:
    """The SMTP connections this process opens from now on (none kept from before)."""
    monkeypatch.setattr(email, "_sessions", email._Sessions())
    opened: list[tuple[str, int]] = []
    real = smtplib.SMTP.connect

    def connect(self: smtplib.SMTP, host: str = "localhost", port: int = 0, *args: Any, **kwargs: Any) -> Any:
        opened.append((host, port))
        return real(self, host, port, *args, **kwargs)

    monkeypatch.setattr(smtplib.SMTP, "connect", connect)
    return opened


def _healthy(client: SandboxClient) -> bool:
    try:
        return requests.get(f"{client.url}/healthz", timeout=2).ok
    except requests.RequestException:
        return False


def start_sandbox(http_port: int, smtp_port: int) -> tuple[ManagedProcess, SandboxClient]:
    process = ManagedProcess(
        "sandbox-smtp", python("-m", "sandbox", "--http-port", str(http_port), "--smtp-port", str(smtp_port))
    )
    client = SandboxClient(f"http://127.0.0.1:{http_port}", smtp_port=smtp_port)
    process.wait_until(lambda: _healthy(client), "sandbox /healthz")
    return process, client


@override_settings(EMAIL_BACKEND=SMTP_BACKEND)
def test_one_send_after_another_goes_over_the_session_the_first_kept(
    sandbox: SandboxClient, pipeline_settings: None, connects: list[tuple[str, int]]
) -> None:
    users = [recipient_user(f"kept{n}") for n in range(4)]

    first = email_send(items=password_reset_emails(users[:2]))
    second = email_send(items=password_reset_emails(users[2:]))

    assert all(isinstance(result, SendResult) for result in first + second), first + second
    assert len(connects) == 1
    assert sorted(mail["to"] for mail in sandbox.received("email")) == sorted(user.email for user in users)


@override_settings(EMAIL_BACKEND=SMTP_BACKEND)
def test_digests_go_over_the_session_deliveries_kept(
    sandbox: SandboxClient, pipeline_settings: None, connects: list[tuple[str, int]]
) -> None:
    # The scheduled digests of a day are one email per user: a session each would be a
    # TCP (and TLS) handshake, EHLO and AUTH per user.
    users = [recipient_user(f"digest{n}", digest_frequency="daily") for n in range(2)]
    now = timezone.now()
    yesterday = digest_period_end(frequency="daily", now=now) - timedelta(hours=1)
    for user in users:
        notification = Notification.objects.create(user=user, kind="video.liked", title="liked")
        Notification.objects.filter(pk=notification.pk).update(created_at=yesterday)

    [delivered] = email_send(items=password_reset_emails(users[:1]))
    digests = [digest_prepare(user_id=user.pk, now=now) for user in users]
    sent = [digest_send(digest_id=digest.pk, now=now) for digest in digests if digest is not None]

    assert isinstance(delivered, SendResult) and sent == [True, True], (delivered, sent)
    assert len(connects) == 1
    assert sorted(mail["to"] for mail in sandbox.received("email")) == sorted([users[0].email] + [u.email for u in users])


@override_settings(EMAIL_BACKEND=SMTP_BACKEND)
def test_a_message_the_server_refuses_leaves_the_session_to_the_next(
    sandbox: SandboxClient, pipeline_settings: None, connects: list[tuple[str, int]]
) -> None:
    # A 5xx answers one message; the server and the session go on (smtplib resets it).
    sandbox.set_knobs("email", error_status=550, fail_next=1)
    users = [recipient_user(f"refused{n}") for n in range(3)]

    first = email_send(items=password_reset_emails(users[:2]))
    second = email_send(items=password_reset_emails(users[2:]))

    assert [type(result).__name__ for result in first + second] == ["ProviderPermanentError", "SendResult", "SendResult"]
    assert len(connects) == 1
    assert sorted(mail["to"] for mail in sandbox.received("email")) == sorted(user.email for user in users[1:])


@pytest.mark.parametrize(("limit", "value", "sends"), [
    ("SESSION_IDLE_SECONDS", 0.0, (1, 1)),  # idle past its time: the second send opens a new one
    ("SESSION_MESSAGES_MAX", 2, (2, 1, 1)),  # two messages on the first session, the rest on a new one
])
@override_settings(EMAIL_BACKEND=SMTP_BACKEND)
def test_a_session_past_its_idle_time_or_its_share_of_messages_is_replaced(
    sandbox: SandboxClient, pipeline_settings: None, connects: list[tuple[str, int]],
    monkeypatch: pytest.MonkeyPatch, limit: str, value: float, sends: tuple[int, ...],
) -> None:
    monkeypatch.setattr(email, limit, value)
    users = [recipient_user(f"{limit.lower()}{n}") for n in range(sum(sends))]

    results = []
    for first, count in zip(itertools.accumulate(sends, initial=0), sends, strict=False):
        results += email_send(items=password_reset_emails(users[first:first + count]))

    assert all(isinstance(result, SendResult) for result in results), results
    assert len(connects) == 2


def test_a_kept_session_whose_server_restarted_is_replaced_and_the_email_sent_once(
    connects: list[tuple[str, int]],
) -> None:
    http_port, smtp_port = free_port(), free_port()
    process, sandbox = start_sandbox(http_port, smtp_port)
    users = [recipient_user(f"restart{n}") for n in range(2)]
    try:
        with override_settings(EMAIL_BACKEND=SMTP_BACKEND, EMAIL_HOST="127.0.0.1", EMAIL_PORT=smtp_port):
            [before] = email_send(items=password_reset_emails(users[:1]))
            process.stop()  # the kept session's server goes away, and a new one takes its port
            process, sandbox = start_sandbox(http_port, smtp_port)
            [after] = email_send(items=password_reset_emails(users[1:]))
        received = sandbox.received("email")
    finally:
        process.stop()

    assert isinstance(before, SendResult) and isinstance(after, SendResult), (before, after)
    assert not isinstance(after, ProviderTransientError)
    assert [mail["to"] for mail in received] == [users[1].email]
    assert len(connects) == 2


def test_every_smtp_session_waits_a_bounded_time_for_the_server() -> None:
    assert getattr(get_connection(SMTP_BACKEND), "timeout", None) == 30.0


def test_an_smtp_server_that_never_answers_is_a_transient_error_once_the_timeout_is_over(
    connects: list[tuple[str, int]],
) -> None:
    silent = socket.create_server(("127.0.0.1", 0))  # takes the connection, never greets
    users = [recipient_user(f"silent{n}") for n in range(2)]
    try:
        with override_settings(EMAIL_BACKEND=SMTP_BACKEND, EMAIL_HOST="127.0.0.1",
                               EMAIL_PORT=silent.getsockname()[1], EMAIL_TIMEOUT=0.5):
            started = time.monotonic()
            results = email_send(items=password_reset_emails(users))
            took = time.monotonic() - started
    finally:
        silent.close()

    # Nothing was sent: each waits for its retry, none is in doubt.
    assert all(isinstance(result, ProviderTransientError) and not result.in_doubt for result in results), results
    assert took < 5
