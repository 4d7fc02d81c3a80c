"""Faults lose no event and send no duplicate: a worker killed mid-send, RabbitMQ down
while events are published, a message that kills every worker that takes it."""

import io
from collections.abc import Callable

import pytest
from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import transaction
from django.utils import timezone
from kombu import Queue

import tests.integration.poison_subscribers  # noqa: F401 - declares test.poison here too
from config.celery import app as critical_app
from core import confirms
from notifications.dead_letters import dead_letter_drain
from notifications.models import Delivery, Event, FailedJob, OutboxMessage
from notifications.queues import EVENTS_EXCHANGE
from notifications.relay import outbox_claim, outbox_publish_claimed, outbox_relay_once
from notifications.services.events import event_publish
from sandbox.client import SandboxClient
from tests.integration.test_pipeline import RESET_URL, make_user, statuses
from tests.processes import ManagedProcess, python, rabbitmqctl, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


def test_worker_killed_in_the_middle_of_a_send_loses_nothing_and_sends_no_duplicate(
    start_pipeline_worker: Callable[..., ManagedProcess], pipeline_settings: None, sandbox: SandboxClient
) -> None:
    user = make_user()
    first = start_pipeline_worker("doomed")
    # The send takes 2 s, and no status callback comes: only asking Twilio can tell the
    # successor that the killed attempt went through. (With callbacks, the "delivered"
    # callback finishes the delivery before the successor even looks.)
    sandbox.set_knobs("sms", latency_ms=2000, callback_loss_rate=1.0)

    event = event_publish(type="password.reset_requested", data={"user_id": user.pk, "reset_url": RESET_URL})
    wait_for(lambda: sandbox.inbox("sms")["in_flight"], "the sms request at Twilio")
    first.kill()
    # Twilio had the request before the worker died, and takes the message.
    sandbox.wait_for("sms", 1)
    start_pipeline_worker("successor")

    wait_for(lambda: statuses(event).get("security_sms") == "sent", "sms recovered")
    wait_for(lambda: statuses(event).get("transactional_email") == "sent", "email sent")
    delivery = Delivery.objects.get(event=event, subscriber="security_sms")
    assert delivery.attempts == 2  # the killed attempt, then the one that checked with Twilio
    assert delivery.provider_response == {"recovered": True}
    assert len(sandbox.received("sms")) == 1
    assert len(sandbox.received("email")) == 1


def test_after_a_rabbitmq_restart_the_next_event_is_published_at_once(
    pipeline_settings: None,
) -> None:
    user = make_user("restart", "+15551230009")
    with transaction.atomic():
        event_publish(type="account.created", data={"user_id": user.pk})  # the pool's connection is up
    rabbitmqctl("stop_app")
    rabbitmqctl("start_app")

    with transaction.atomic():
        after = event_publish(type="account.created", data={"user_id": user.pk})

    # No relay runs here: only the fast path can have published it.
    assert not OutboxMessage.objects.filter(event=after, published_at__isnull=True).exists()


def test_rows_rabbitmq_refuses_are_left_to_the_relay_and_the_others_are_marked_published() -> None:
    # A full queue that refuses new messages (overflow reject-publish) makes RabbitMQ
    # answer a publish with a nack: that row, and only it, waits for a later relay pass.
    refusing = Queue("test.refusing", EVENTS_EXCHANGE, routing_key="test.refused", auto_delete=True,
                     queue_arguments={"x-max-length": 0, "x-overflow": "reject-publish"})
    with critical_app.connection_for_write() as connection:
        refusing(connection.default_channel).declare()
        try:
            event = Event.objects.create(type="test.refused", version=1, occurred_at=timezone.now(), data={})
            rows = [OutboxMessage.objects.create(event=event, kind=OutboxMessage.Kind.ENVELOPE,
                                                 payload={"id": str(number), "type": kind})
                    for number, kind in ((1, "test.unrouted"), (2, "test.refused"), (3, "test.unrouted"))]

            published = outbox_publish_claimed(outbox_claim(limit=10))
        finally:
            refusing(connection.default_channel).delete()

    assert published == 2
    first, refused, last = (OutboxMessage.objects.get(pk=row.pk) for row in rows)
    assert first.published_at and last.published_at
    assert refused.published_at is None and refused.claim_token is None
    assert "refused" in refused.last_error


def test_rows_rabbitmq_never_confirms_are_left_to_the_relay_and_published_once_it_does(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A memory alarm (threshold 0) makes RabbitMQ block every connection that publishes:
    # it stops reading from it, so no confirm comes. The publisher gives up after its
    # confirm timeout and leaves the rows to the relay, which publishes them once the
    # alarm is over.
    monkeypatch.setattr(confirms, "CONFIRM_TIMEOUT_SECONDS", 1.0)
    event = Event.objects.create(type="test.blocked", version=1, occurred_at=timezone.now(), data={})
    rows = [OutboxMessage.objects.create(event=event, kind=OutboxMessage.Kind.ENVELOPE,
                                         payload={"id": str(number), "type": "test.unrouted"}) for number in (1, 2)]
    rabbitmqctl("set_vm_memory_high_watermark", "0")
    try:
        published = outbox_publish_claimed(outbox_claim(limit=10))
    finally:
        rabbitmqctl("set_vm_memory_high_watermark", "0.4")

    assert published == 0
    for row in rows:
        row.refresh_from_db()
        assert row.published_at is None and row.claim_token is None
        assert row.last_error == "ConfirmTimeoutError: RabbitMQ did not confirm within 1 s"
    assert outbox_relay_once(limit=10) == (2, 2)
    assert not OutboxMessage.objects.filter(published_at__isnull=True).exists()


def test_rabbitmq_stopped_while_events_are_published_loses_nothing(
    start_pipeline_worker: Callable[..., ManagedProcess],
    pipeline_settings: None,
    sandbox: SandboxClient,
    relay_process: ManagedProcess,
) -> None:
    users = [make_user(f"user{n}", f"+1555123000{n}") for n in range(3)]
    start_pipeline_worker()

    rabbitmqctl("stop_app")
    try:
        events = []
        for user in users:
            with transaction.atomic():
                events.append(event_publish(type="account.created", data={"user_id": user.pk}))
        # The fast path could not publish (then paused): the rows wait in the outbox,
        # given to the relay at once, not held until their claim's lease runs out. The
        # relay, running, claims them for an instant at each of its passes (and gives
        # them back when RabbitMQ refuses it): wait for a moment between two passes,
        # well within the lease.
        assert OutboxMessage.objects.filter(published_at__isnull=True).count() == 3 * 4
        wait_for(lambda: not OutboxMessage.objects.filter(claim_token__isnull=False).exists(),
                 "every row unclaimed between two relay passes", settings.CARILLON_CLAIM_LEASE_SECONDS / 3)
    finally:
        rabbitmqctl("start_app")

    def all_sent() -> bool:
        return all(set(statuses(event).values()) == {"sent"} for event in events)

    wait_for(all_sent, "every event delivered after the restart", 90)
    assert not OutboxMessage.objects.filter(published_at__isnull=True).exists()
    assert sorted(mail["rcpt_to"][0] for mail in sandbox.received("email")) == [
        "user0@example.com", "user1@example.com", "user2@example.com",
    ]
    assert len(sandbox.received("mixpanel")) == 3


def test_rabbitmq_restarted_while_an_analytics_delivery_waits_for_its_window_loses_nothing(
    start_pipeline_worker: Callable[..., ManagedProcess], pipeline_settings: None, sandbox: SandboxClient
) -> None:
    # A lone analytics delivery is written, and its job published again to come back
    # after the batch window: during that window the job lives only in RabbitMQ's
    # delayed-delivery queues, which must outlive a restart of the broker.
    start_pipeline_worker(CARILLON_ANALYTICS_BATCH_WINDOW_SECONDS="6")
    user = make_user("waiting", "+15551230042")
    event = event_publish(type="video.liked", data={"user_id": user.pk, "video_id": "v1", "liked_by": "Bo"})
    wait_for(lambda: statuses(event) == {"activity_feed": "sent", "product_analytics": "pending"},
             "the in-app notification sent, the analytics delivery waiting for its window")

    rabbitmqctl("stop_app")
    rabbitmqctl("start_app")

    wait_for(lambda: statuses(event).get("product_analytics") == "sent", "the analytics delivery sent", 60)
    inbox = sandbox.inbox("mixpanel")
    assert (inbox["accepted"], inbox["duplicates"]) == (1, 0)


def test_poison_message_is_dead_lettered_after_its_delivery_limit_and_recorded(
    start_pipeline_worker: Callable[..., ManagedProcess], pipeline_settings: None
) -> None:
    user = get_user_model().objects.create_user("victim")
    start_pipeline_worker(CARILLON_SUBSCRIBER_MODULES="tests.integration.poison_subscribers")

    event = event_publish(type="test.poison", data={"user_id": user.pk})

    # Each delivery kills a worker process; past the queue's x-delivery-limit RabbitMQ
    # dead-letters the message instead of handing it out forever.
    def drained() -> FailedJob | None:
        dead_letter_drain()
        return FailedJob.objects.filter(event=event).first()

    failed = wait_for(drained, "poison dead-lettered and recorded", 120)
    assert failed.source == "dead_letter"
    assert failed.queue == "carillon.inapp" and failed.task_name == "notifications.inapp.deliver"
    assert "delivery_limit" in failed.error_message
    assert failed.args == [str(event.id), "crashing_feed"]
    assert dead_letter_drain().taken == 0  # nothing left, nothing recorded twice
    assert FailedJob.objects.filter(event=event).count() == 1


def test_dead_letter_drain_killed_half_way_and_run_again_loses_and_duplicates_nothing() -> None:
    from config.celery import app as critical_app
    from notifications.queues import topology_declare

    queue = "carillon.sms.dlq"
    total = 400
    with critical_app.connection_for_write() as connection:
        topology_declare(connection)
        producer = connection.Producer()
        for n in range(total):
            # As a dead-lettered Celery message looks: task headers and RabbitMQ's x-death.
            producer.publish(
                [[f"not-an-event-{n}", "security_sms"], {}, {}],
                routing_key=queue,
                serializer="json",
                headers={
                    "id": f"dead-{n}",
                    "task": "notifications.send_sms",
                    "x-death": [{"queue": "carillon.sms", "reason": "rejected", "count": 1}],
                },
                delivery_mode=2,
            )

    drain = ManagedProcess("drain", python("manage.py", "drain_dead_letters"))
    wait_for(lambda: FailedJob.objects.count() >= 40, "the first drain recorded some", timeout=60)
    drain.kill()
    recorded_before_kill = FailedJob.objects.count()
    assert recorded_before_kill < total, "the drain finished before it could be killed"

    # The killed drain's unacknowledged messages are back in the queue, some of them with
    # their FailedJob already committed: those are acknowledged and not recorded again.
    assert dead_letter_drain().recorded == total - recorded_before_kill
    recorded = list(FailedJob.objects.values_list("task_id", flat=True))
    assert sorted(recorded) == sorted(f"dead-{n}" for n in range(total))  # each once
    assert dead_letter_drain().taken == 0  # the queue is empty: nothing left unacknowledged


def test_dead_letter_drain_says_what_it_recorded_and_what_was_recorded_before() -> None:
    from django.core.management import call_command

    from config.celery import app as critical_app
    from notifications.queues import dead_letter_queues, topology_declare

    with critical_app.connection_for_write() as connection:
        topology_declare(connection)
        for queue in dead_letter_queues():  # what earlier tests dead-lettered is not ours
            queue(connection.default_channel).purge()
        producer = connection.Producer()
        for task_id in ("known", "new"):
            producer.publish(
                [["not-an-event", "security_sms"], {}, {}],
                routing_key="carillon.sms.dlq",
                serializer="json",
                headers={"id": task_id, "task": "notifications.sms.deliver",
                         "x-death": [{"queue": "carillon.sms", "reason": "rejected", "count": 1}]},
                delivery_mode=2,
            )
    # The task recorded its own failure before RabbitMQ dead-lettered it.
    FailedJob.objects.create(task_name="notifications.sms.deliver", task_id="known", dedup_key="known",
                             queue="carillon.sms", error_class="ProviderPermanentError", error_message="400")
    out = io.StringIO()

    call_command("drain_dead_letters", stdout=out)

    assert out.getvalue().strip() == (
        "2 dead-lettered messages taken: 1 recorded as new failed jobs, 1 already recorded"
    )
    assert sorted(FailedJob.objects.values_list("task_id", flat=True)) == ["known", "new"]
