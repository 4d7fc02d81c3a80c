"""Domain events reach every subscriber's provider once: real RabbitMQ, workers, sandbox."""

import asyncio
import re
from datetime import UTC, datetime
from typing import Any

import pytest
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext

from notifications.models import Delivery, Event, FailedJob, Notification, OutboxMessage
from notifications.services.deliveries import delivery_send
from notifications.services.events import event_publish
from notifications.services.failed_jobs import failed_job_replay
from realtime.history import HistoryRead, ahistory_since
from realtime.services import async_client
from realtime.topics import topic_parse, user_topic
from sandbox.client import SandboxClient
from tests.factories import EventFactory, recipient_user
from tests.integration.conftest import CeleryWorker, wait_until_settled
from tests.processes import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

RESET_URL = "https://carillon.example.com/reset/abc"


def make_user(username: str = "ada", phone: str = "+15551230001") -> Any:
    return recipient_user(username, phone_number=phone)


def statuses(event: Event) -> dict[str, str]:
    return dict(Delivery.objects.filter(event=event).values_list("subscriber", "status"))


def user_topic_history(user_id: int, *, last_id: int) -> HistoryRead:
    """What the realtime history of `user:<id>` holds after `last_id`."""

    async def read() -> HistoryRead:
        return await ahistory_since(async_client(), topic=topic_parse(user_topic(user_id)), last_id=last_id)

    return asyncio.run(read())


@pytest.fixture
def worker(pipeline_worker: CeleryWorker) -> CeleryWorker:
    return pipeline_worker


def test_event_published_in_a_transaction_reaches_every_subscriber_once(
    worker: CeleryWorker, sandbox: SandboxClient
) -> None:
    user = make_user()
    pushed_before = user_topic_history(user.pk, last_id=0).latest_id

    with transaction.atomic():
        event = event_publish(type="account.created", data={"user_id": user.pk, "name": "Ada"})

    expected = {"transactional_email": "sent", "product_analytics": "sent", "activity_feed": "sent"}
    wait_for(lambda: statuses(event) == expected, "every delivery sent")
    [email] = sandbox.received("email")
    assert email["rcpt_to"] == ["ada@example.com"] and email["subject"] == "Welcome to Carillon, Ada"
    [analytics] = sandbox.received("mixpanel")
    assert analytics["event"] == "account.created" and analytics["properties"]["distinct_id"] == str(user.pk)
    [notification] = Notification.objects.filter(user=user)
    assert notification.title == "Welcome aboard"
    [pushed] = user_topic_history(user.pk, last_id=pushed_before).messages  # pushed live, once
    assert pushed["event"] == "notification.created"
    assert pushed["data"]["notification"]["id"] == notification.pk and pushed["data"]["unread_count"] == 1
    assert not OutboxMessage.objects.filter(event=event, published_at__isnull=True).exists()
    wait_until_settled(worker)  # nothing more can arrive later: once means once
    assert len(sandbox.received("email")) == len(sandbox.received("mixpanel")) == 1


def test_password_reset_sms_is_confirmed_delivered_by_the_signed_callback(
    worker: CeleryWorker, sandbox: SandboxClient
) -> None:
    user = make_user()
    sandbox.set_knobs("sms", callback_delay_ms=20)

    with transaction.atomic():
        event = event_publish(type="password.reset_requested", data={"user_id": user.pk, "reset_url": RESET_URL})

    wait_for(lambda: statuses(event).get("security_sms") == "delivered", "sms delivered by callback")
    [sms] = sandbox.received("sms")
    assert sms["to"] == "+15551230001" and RESET_URL in sms["body"]
    delivery = Delivery.objects.get(event=event, subscriber="security_sms")
    assert delivery.provider_message_id == sms["sid"]
    assert [c.status for c in delivery.callbacks.all()] == ["queued", "sent", "delivered"]
    assert all(call["http_status"] == 204 for call in sms["callbacks"])


def test_rolled_back_transaction_sends_nothing(worker: CeleryWorker, sandbox: SandboxClient) -> None:
    user = make_user()

    with pytest.raises(RuntimeError), transaction.atomic():
        event_publish(type="account.created", data={"user_id": user.pk})
        raise RuntimeError("the caller's business logic failed")

    assert not Event.objects.exists() and not OutboxMessage.objects.exists()
    wait_until_settled(worker)  # nothing queued, nothing held by the worker
    assert sandbox.received("email") == [] and sandbox.received("mixpanel") == []


def test_provider_5xx_is_retried_with_backoff_and_then_succeeds(
    worker: CeleryWorker, sandbox: SandboxClient
) -> None:
    user = make_user()
    sandbox.set_knobs("sms", fail_next=2, error_status=503)

    event = event_publish(type="password.reset_requested", data={"user_id": user.pk, "reset_url": RESET_URL})

    wait_for(lambda: statuses(event).get("security_sms") == "delivered", "sms delivered after retries")
    assert Delivery.objects.get(event=event, subscriber="security_sms").attempts == 3
    assert len(sandbox.received("sms")) == 1
    assert sandbox.inbox("sms")["rejected"] == 2
    assert not FailedJob.objects.exists()


def reset_whose_sms_fails(sandbox: SandboxClient, *, times: int) -> tuple[Event, FailedJob]:
    """Publish a password reset whose SMS Twilio refuses (400) `times` times in a row;
    return the event and the failed job its first attempt left."""
    user = make_user()
    sandbox.set_knobs("sms", fail_next=times, error_status=400)
    event = event_publish(type="password.reset_requested", data={"user_id": user.pk, "reset_url": RESET_URL})
    return event, wait_for(lambda: FailedJob.objects.filter(event=event).first(), "a failed job")


def test_provider_4xx_fails_at_once_into_a_failed_job_and_dead_letter(
    worker: CeleryWorker, sandbox: SandboxClient
) -> None:
    event, failed = reset_whose_sms_fails(sandbox, times=1)

    assert failed.error_class == "ProviderPermanentError" and failed.queue == "carillon.sms"
    assert failed.attempts == 1 and failed.args == [str(event.id), "security_sms"]
    delivery = Delivery.objects.get(event=event, subscriber="security_sms")
    assert delivery.status == "failed" and delivery.attempts == 1
    # The other subscriber of the same event is not affected.
    wait_for(lambda: statuses(event).get("transactional_email") == "sent", "email sent")
    assert sandbox.received("sms") == []


def test_a_replay_that_fails_again_is_a_new_failed_job_that_can_be_replayed(
    worker: CeleryWorker, sandbox: SandboxClient
) -> None:
    event, first = reset_whose_sms_fails(sandbox, times=2)

    failed_job_replay(failed_job_id=first.pk, user_id=None)
    again = wait_for(
        lambda: FailedJob.objects.filter(event=event, state="failed").first(), "the replay's failure recorded"
    )
    failed_job_replay(failed_job_id=again.pk, user_id=None)

    wait_for(lambda: statuses(event).get("security_sms") == "delivered", "sms delivered after the second replay")
    assert again.pk != first.pk and again.error_class == "ProviderPermanentError"
    assert list(FailedJob.objects.filter(event=event).values_list("state", flat=True).order_by("pk")) == [
        "replayed", "replayed"
    ]
    assert len(sandbox.received("sms")) == 1  # each replay sent at most once: two refused, one taken


def test_replay_of_a_job_that_had_succeeded_sends_nothing_new(worker: CeleryWorker, sandbox: SandboxClient) -> None:
    user = make_user()
    event = event_publish(type="account.created", data={"user_id": user.pk})
    wait_for(lambda: statuses(event).get("transactional_email") == "sent", "email sent")
    # A job recorded as failed although it went through (e.g. a worker lost after the send).
    failed = FailedJob.objects.create(
        task_name="notifications.email.deliver", task_id="lost", queue="carillon.email",
        args=[str(event.pk), "transactional_email"], event=event, error_class="WorkerLostError",
        error_message="worker lost",
    )

    failed_job_replay(failed_job_id=failed.pk, user_id=None)

    task_done = re.compile(rf"notifications\.email\.deliver\[{event.pk}\.transactional_email\.\d+\] succeeded")
    wait_for(lambda: len(task_done.findall(worker.log())) == 2, "the replayed task ran")
    assert len(sandbox.received("email")) == 1
    assert Delivery.objects.get(event=event, subscriber="transactional_email").attempts == 1


def test_analytics_of_many_events_go_to_mixpanel_in_few_requests_and_one_it_refuses_is_a_failed_job(
    worker: CeleryWorker, sandbox: SandboxClient
) -> None:
    owners = [make_user(f"owner{n}", f"+1555000000{n}") for n in range(9)]

    events = [
        event_publish(type="video.liked", data={"user_id": owner.pk, "video_id": f"v{n}", "liked_by": "Bo"})
        for n, owner in enumerate(owners[:8])
    ]
    # Mixpanel refuses events dated before 1971: that one fails alone, not its batch.
    ancient = event_publish(
        type="video.liked", data={"user_id": owners[8].pk, "video_id": "v8", "liked_by": "Bo"},
        occurred_at=datetime(1970, 6, 1, tzinfo=UTC),
    )

    wait_for(lambda: all(statuses(e).get("product_analytics") == "sent" for e in events), "analytics sent")
    failed_job = wait_for(lambda: FailedJob.objects.filter(event=ancient).first(), "the refused event's failed job")
    assert failed_job.args[1] == "product_analytics" and "properties.time" in failed_job.error_message
    assert statuses(ancient)["product_analytics"] == "failed"
    inbox = sandbox.inbox("mixpanel")
    assert (inbox["accepted"], inbox["rejected"], inbox["duplicates"]) == (8, 1, 0)
    assert inbox["requests"] < 8  # batched: several events shared a request
    assert sorted(item["properties"]["video_id"] for item in inbox["received"]) == [f"v{n}" for n in range(8)]

    # Its replay sends that event alone (refused again: a new failed job), none of the eight.
    failed_job_replay(failed_job_id=failed_job.pk, user_id=None)
    wait_for(lambda: FailedJob.objects.filter(event=ancient, state="failed").exists(), "the replay's failure recorded")
    inbox = sandbox.inbox("mixpanel")
    assert (inbox["accepted"], inbox["rejected"], inbox["duplicates"]) == (8, 2, 0)


def test_the_fast_path_publishes_rows_born_claimed_and_marks_them_in_one_statement(worker: CeleryWorker) -> None:
    # account.created has four outbox rows (its envelope and three subscribers' tasks):
    # they are written claimed by the fast path, which then only marks them published,
    # in one UPDATE however many there are; it reads none of them back.
    user = make_user()

    with CaptureQueriesContext(connection) as queries, transaction.atomic():
        event = event_publish(type="account.created", data={"user_id": user.pk, "name": "Ada"})

    outbox = [q["sql"] for q in queries.captured_queries if OutboxMessage._meta.db_table in q["sql"]]
    assert [sql.split()[0] for sql in outbox] == ["INSERT", "UPDATE"], outbox
    assert OutboxMessage.objects.filter(event=event, published_at__isnull=True).count() == 0
    assert set(OutboxMessage.objects.filter(event=event).values_list("attempts", flat=True)) == {1}
    wait_for(lambda: len(statuses(event)) == 3 and set(statuses(event).values()) == {"sent"}, "every delivery sent")


@pytest.mark.parametrize(("subscriber", "statements"), [("transactional_email", 5), ("activity_feed", 7)])
def test_one_recipient_does_not_pay_for_batching(
    subscriber: str, statements: int, pipeline_settings: None, sandbox: SandboxClient,
    django_assert_max_num_queries: Any,
) -> None:
    # A transactional delivery runs the broadcast's code with one item; per delivery it
    # reads the event, the user and their preferences, inserts the delivery already marked
    # as attempted (and, in-app, the notification, then counts what is unread) and
    # records the send.
    user = make_user()
    event = EventFactory.create(type="account.created", data={"user_id": user.pk})

    with django_assert_max_num_queries(statements):
        delivery_send(event_id=str(event.id), subscriber_name=subscriber)

    assert statuses(event) == {subscriber: "sent"}
