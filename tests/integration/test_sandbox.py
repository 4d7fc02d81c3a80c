"""The provider sandbox speaks each provider's protocol to its real client library (or, for
Postmark's batch API, to Carillon's own client)."""

import http.server
import smtplib
import threading
import urllib.parse
from collections.abc import Iterator
from email.utils import make_msgid
from typing import Any

import pytest
import requests
from django.conf import settings
from django.core.mail import EmailMultiAlternatives, get_connection
from django.test import override_settings
from mixpanel import BufferedConsumer, Consumer, Mixpanel, MixpanelException
from twilio.base.exceptions import TwilioRestException
from twilio.request_validator import RequestValidator

from core.errors import ProviderPermanentError, ProviderTransientError
from notifications.providers.postmark.client import postmark_send_batch
from notifications.providers.twilio.client import twilio_client
from sandbox.client import SandboxClient
from tests.processes import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.database_agnostic]

SANDBOX_TWILIO_TOKEN = "sandbox-auth-token"  # the sandbox's default --twilio-auth-token
MIXPANEL_TOKEN = "sandbox-mixpanel-token"  # any: /track takes the token it is given
SANDBOX_POSTMARK_TOKEN = "sandbox-postmark-token"  # the sandbox's default --postmark-server-token


class CallbackReceiver(http.server.ThreadingHTTPServer):
    """Stands for Carillon's webhook endpoint: records each POST it receives."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []
        super().__init__(("127.0.0.1", 0), _RecordingHandler)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/api/webhooks/twilio/"

    def wait_for(self, count: int, timeout: float = 10.0) -> list[dict[str, Any]]:
        return wait_for(lambda: self.calls if len(self.calls) >= count else None, f"{count} callbacks", timeout)


class _RecordingHandler(http.server.BaseHTTPRequestHandler):
    server: CallbackReceiver

    def do_POST(self) -> None:  # noqa: N802 - http.server's hook name
        body = self.rfile.read(int(self.headers["Content-Length"])).decode()
        self.server.calls.append(
            {"params": dict(urllib.parse.parse_qsl(body)), "signature": self.headers["X-Twilio-Signature"]}
        )
        self.send_response(204)
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass


@pytest.fixture
def callback_receiver() -> Iterator[CallbackReceiver]:
    server = CallbackReceiver()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture
def sandbox_settings(sandbox: SandboxClient) -> Iterator[SandboxClient]:
    """Point Django's email and the provider clients at the sandbox."""
    with override_settings(
        EMAIL_BACKEND="django.core.mail.backends.smtp.EmailBackend",
        EMAIL_HOST="127.0.0.1",
        EMAIL_PORT=sandbox.smtp_port,
        TWILIO_API_BASE_URL=sandbox.url,
        TWILIO_AUTH_TOKEN=SANDBOX_TWILIO_TOKEN,
        MIXPANEL_API_BASE_URL=sandbox.url,
        MIXPANEL_API_SECRET="sandbox-mixpanel-secret",
    ):
        yield sandbox


def test_email_sent_through_django_smtp_backend_is_received_and_listed(sandbox_settings: SandboxClient) -> None:
    message_id = make_msgid(domain="carillon.local")
    email = EmailMultiAlternatives(
        subject="Welcome to Carillon",
        body="Hello Ada",
        from_email="noreply@carillon.local",
        to=["ada@example.com"],
        headers={"Message-ID": message_id},
    )
    email.attach_alternative("<p>Hello <b>Ada</b></p>", "text/html")

    assert email.send() == 1

    [received] = sandbox_settings.received("email")
    assert received["message_id"] == message_id
    assert received["rcpt_to"] == ["ada@example.com"]
    assert received["subject"] == "Welcome to Carillon"
    assert received["text"].strip() == "Hello Ada"
    assert "<b>Ada</b>" in received["html"]


def test_email_headers_are_listed_decoded_and_unfolded(sandbox_settings: SandboxClient) -> None:
    # A subject long enough to fold, in encoded words, as Django sends non-ASCII text.
    subject = "Bienvenue à Carillon, Adélaïde — " + "un sujet assez long pour être replié " * 3
    email = EmailMultiAlternatives(
        subject=subject, body="Bonjour Adélaïde", from_email="Carillon Équipe <noreply@carillon.local>",
        to=["Adélaïde <ada@example.com>"], headers={"X-Campaign": "rentrée"},
    )
    email.attach_alternative("<p>Bonjour <b>Adélaïde</b></p>", "text/html")

    assert email.send() == 1

    [received] = sandbox_settings.received("email")
    assert received["subject"] == subject
    assert received["from"] == "Carillon Équipe <noreply@carillon.local>"
    assert received["to"] == "Adélaïde <ada@example.com>"
    assert received["headers"]["X-Campaign"] == "rentrée"
    assert received["text"].strip() == "Bonjour Adélaïde"
    assert "<b>Adélaïde</b>" in received["html"]


def test_email_refused_by_the_server_raises_its_smtp_code(sandbox_settings: SandboxClient) -> None:
    sandbox_settings.set_knobs("email", fail_next=1, error_status=451)
    connection = get_connection(fail_silently=False)

    with pytest.raises(smtplib.SMTPDataError) as refused:
        EmailMultiAlternatives("s", "b", "a@carillon.local", ["b@example.com"], connection=connection).send()

    assert refused.value.smtp_code == 451
    assert sandbox_settings.received("email") == []


def test_twilio_sms_is_queued_then_signed_callbacks_report_delivery(
    sandbox_settings: SandboxClient, callback_receiver: CallbackReceiver
) -> None:
    sandbox_settings.set_knobs("sms", callback_delay_ms=10)

    message = twilio_client().messages.create(
        to="+15551230001", from_="+15005550006", body="Your code is 123456",
        status_callback=callback_receiver.url,
    )

    assert message.sid.startswith("SM") and message.status == "queued"
    calls = callback_receiver.wait_for(3)
    assert [call["params"]["MessageStatus"] for call in calls] == ["queued", "sent", "delivered"]
    validator, forger = RequestValidator(SANDBOX_TWILIO_TOKEN), RequestValidator("not-the-token")
    for call in calls:
        assert call["params"]["MessageSid"] == message.sid
        assert validator.validate(callback_receiver.url, call["params"], call["signature"])
        assert not forger.validate(callback_receiver.url, call["params"], call["signature"])
    [listed] = sandbox_settings.received("sms")
    assert (listed["sid"], listed["to"], listed["body"]) == (message.sid, "+15551230001", "Your code is 123456")
    assert twilio_client().messages(message.sid).fetch().status == "delivered"


def test_twilio_errors_follow_twilio(sandbox_settings: SandboxClient) -> None:
    with pytest.raises(TwilioRestException) as missing_body:
        twilio_client().messages.create(to="+15551230001", from_="+15005550006", body="")
    sandbox_settings.set_knobs("sms", fail_next=1, error_status=503)
    with pytest.raises(TwilioRestException) as unavailable:
        twilio_client().messages.create(to="+15551230001", from_="+15005550006", body="hi")
    with override_settings(TWILIO_AUTH_TOKEN="wrong"), pytest.raises(TwilioRestException) as forbidden:
        twilio_client().messages.create(to="+15551230001", from_="+15005550006", body="hi")

    assert (missing_body.value.status, missing_body.value.code) == (400, 21602)
    assert unavailable.value.status == 503
    assert (forbidden.value.status, forbidden.value.code) == (401, 20003)
    assert sandbox_settings.received("sms") == []


def test_twilio_lost_callbacks_never_arrive(
    sandbox_settings: SandboxClient, callback_receiver: CallbackReceiver
) -> None:
    sandbox_settings.set_knobs("sms", callback_delay_ms=5, callback_loss_rate=1.0)

    message = twilio_client().messages.create(
        to="+15551230001", from_="+15005550006", body="hi", status_callback=callback_receiver.url
    )

    # The sandbox takes each status, then posts its callback and waits for the answer
    # before the next: by the time the message is delivered, the "queued" and "sent"
    # callbacks would have arrived had they not been lost.
    wait_for(lambda: twilio_client().messages(message.sid).fetch().status == "delivered", "the message delivered")
    assert callback_receiver.calls == []


def mixpanel_consumer(*, buffered: bool = False) -> Consumer | BufferedConsumer:
    """Mixpanel's official library aimed at the sandbox: the sandbox must take what the
    library sends, not only what Carillon's own client does."""
    base = settings.MIXPANEL_API_BASE_URL.rstrip("/")
    urls = {"events_url": f"{base}/track", "import_url": f"{base}/import"}
    return BufferedConsumer(max_size=50, **urls) if buffered else Consumer(**urls)


def mixpanel_client() -> Mixpanel:
    return Mixpanel(MIXPANEL_TOKEN, consumer=mixpanel_consumer())


def test_mixpanel_track_deduplicates_on_insert_id(sandbox_settings: SandboxClient) -> None:
    client = mixpanel_client()
    properties = {"$insert_id": "delivery-42", "time": 1_700_000_000, "video": "v1"}

    client.track("user-1", "video.liked", properties)
    client.track("user-1", "video.liked", properties)  # a retried send
    client.track("user-1", "video.liked", {**properties, "$insert_id": "delivery-43"})

    inbox = sandbox_settings.inbox("mixpanel")
    assert (inbox["accepted"], inbox["duplicates"]) == (2, 1)
    assert [item["properties"]["$insert_id"] for item in inbox["received"]] == ["delivery-42", "delivery-43"]
    assert inbox["received"][0]["properties"]["token"] == MIXPANEL_TOKEN


def test_mixpanel_buffered_consumer_sends_one_batch(sandbox_settings: SandboxClient) -> None:
    consumer = mixpanel_consumer(buffered=True)
    client = Mixpanel(MIXPANEL_TOKEN, consumer=consumer)
    for index in range(3):
        client.track(f"user-{index}", "account.created", {"$insert_id": f"created-{index}"})
    assert sandbox_settings.received("mixpanel") == []  # still buffered

    consumer.flush()

    assert len(sandbox_settings.received("mixpanel")) == 3


def test_mixpanel_import_needs_the_project_secret(sandbox_settings: SandboxClient) -> None:
    client = mixpanel_client()
    properties = {"$insert_id": "import-1", "source": "backfill"}

    event = {"distinct_id": "user-9", "event_name": "account.created", "timestamp": 1_700_000_000}

    client.import_data(None, **event, properties=properties, api_secret="sandbox-mixpanel-secret")
    with pytest.raises(MixpanelException):
        client.import_data(None, **event, properties=properties, api_secret="wrong-secret")

    [received] = sandbox_settings.received("mixpanel")
    assert (received["endpoint"], received["event"]) == ("import", "account.created")


def test_sandbox_refuses_unknown_knobs_with_a_clear_error(sandbox: SandboxClient) -> None:
    response = sandbox.http.put(f"{sandbox.url}/api/knobs/sms", json={"latency": 5}, timeout=5)

    assert response.status_code == 400
    assert response.json()["error"] == "invalid_knobs"
    assert "latency_ms" in response.json()["message"]


def test_rate_limit_knob_answers_429_with_retry_after_past_the_rate(sandbox: SandboxClient) -> None:
    sandbox.set_knobs("sms", rate_limit_per_second=2)
    sandbox.set_knobs("mixpanel", rate_limit_per_second=1)
    sandbox.set_knobs("email", rate_limit_per_second=1)
    messages = f"{sandbox.url}/2010-04-01/Accounts/AC1/Messages.json"
    form = {"To": "+15005550006", "From": "+15005550001", "Body": "hello"}
    answers = [
        requests.post(messages, data=form, auth=("AC1", SANDBOX_TWILIO_TOKEN), timeout=10) for _ in range(4)
    ]
    assert [answer.status_code for answer in answers] == [201, 201, 429, 429]
    assert answers[2].json()["code"] == 20429 and int(answers[2].headers["Retry-After"]) >= 1
    track = [requests.post(f"{sandbox.url}/track", data={"data": "[]"}, timeout=10) for _ in range(2)]
    assert track[1].status_code == 429 and "Retry-After" in track[1].headers
    with smtplib.SMTP("127.0.0.1", sandbox.smtp_port, timeout=10) as smtp:
        smtp.sendmail("a@example.com", ["b@example.com"], "Subject: one\r\n\r\nbody")
        with pytest.raises(smtplib.SMTPDataError) as refused:
            smtp.sendmail("a@example.com", ["b@example.com"], "Subject: two\r\n\r\nbody")
    assert refused.value.smtp_code == 421
    assert (sandbox.inbox("sms")["accepted"], sandbox.inbox("sms")["rate_limited"]) == (2, 2)
    assert [sandbox.inbox(name)["rate_limited"] for name in ("mixpanel", "email")] == [1, 1]


@pytest.fixture
def postmark_settings(sandbox: SandboxClient) -> Iterator[SandboxClient]:
    with override_settings(POSTMARK_SERVER_TOKEN=SANDBOX_POSTMARK_TOKEN, POSTMARK_API_BASE_URL=sandbox.url):
        yield sandbox


def postmark_message(to: str, message_id: str, **fields: Any) -> dict[str, Any]:
    return {"From": "Carillon <noreply@carillon.local>", "To": to, "Subject": "Hello", "TextBody": "Hi",
            "Headers": [{"Name": "Message-ID", "Value": message_id}], **fields}


def test_a_postmark_batch_answers_each_message_and_the_mailbox_shows_one_per_message_id(
    postmark_settings: SandboxClient,
) -> None:
    taken = postmark_message("a@example.com", make_msgid())
    results = postmark_send_batch([
        taken,
        postmark_message("gone@inactive.example.com", make_msgid()),
        postmark_message("c@example.com", make_msgid(), TextBody=""),  # no body at all
        taken,  # sent again: the same message to the mailbox
    ])

    assert isinstance(results[0], str) and results[3] == results[0]
    assert isinstance(results[1], ProviderPermanentError) and "ErrorCode 406" in str(results[1])
    assert isinstance(results[2], ProviderPermanentError) and "ErrorCode 300" in str(results[2])
    [mail] = postmark_settings.received("email")
    assert (mail["rcpt_to"], mail["via"], mail["postmark_id"]) == (["a@example.com"], "postmark", results[0])
    inbox = postmark_settings.inbox("email")
    assert (inbox["requests"], inbox["duplicates"], inbox["rejected"]) == (1, 1, 1)


def test_postmark_refuses_a_wrong_token_an_oversized_batch_a_failure_and_what_is_past_its_rate(
    postmark_settings: SandboxClient,
) -> None:
    with override_settings(POSTMARK_SERVER_TOKEN="not-the-token"), pytest.raises(ProviderPermanentError, match="401"):
        postmark_send_batch([postmark_message("a@example.com", make_msgid())])
    oversized = requests.post(
        f"{postmark_settings.url}/email/batch", json=[postmark_message("a@example.com", make_msgid())] * 501,
        headers={"X-Postmark-Server-Token": SANDBOX_POSTMARK_TOKEN}, timeout=30,
    )
    assert oversized.status_code == 422 and oversized.json()["ErrorCode"] == 410

    postmark_settings.set_knobs("email", fail_next=1, error_status=503)
    with pytest.raises(ProviderTransientError) as down:  # answered: certainly not taken
        postmark_send_batch([postmark_message("a@example.com", make_msgid())])
    assert "503" in str(down.value) and not down.value.in_doubt and down.value.retry_after is None

    postmark_settings.set_knobs("email", rate_limit_per_second=1)
    postmark_send_batch([postmark_message("a@example.com", make_msgid())])
    with pytest.raises(ProviderTransientError) as limited:
        postmark_send_batch([postmark_message("b@example.com", make_msgid())])
    assert limited.value.retry_after is not None and limited.value.retry_after >= 1 and not limited.value.in_doubt
    assert len(postmark_settings.received("email")) == 1
