"""Transactional deliveries sent together: a worker that holds several messages sends them
in one batch, each exactly once, and leaves whatever a batch cannot finish to the
ordinary task. Real RabbitMQ, workers, database and sandbox."""

import os
import re
import signal
import subprocess
from collections.abc import Callable
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.db import connection, transaction
from django.test import override_settings
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from core.errors import ProviderPermanentError
from notifications.channels import Channel
from notifications.models import Delivery, OutboxMessage, Preference
from notifications.providers import email
from notifications.services.deliveries import PutOff, Work, deliveries_send_together, delivery_send
from notifications.services.events import event_publish
from sandbox.client import SandboxClient
from tests.factories import EventFactory
from tests.integration.conftest import worker_inspect
from tests.integration.test_pipeline import RESET_URL, make_user, statuses
from tests.processes import ManagedProcess, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


def users_made(count: int, prefix: str) -> list[Any]:
    return [make_user(f"{prefix}{n}", phone=f"+1555300{n:04d}") for n in range(count)]


def emails_seen(sandbox: SandboxClient) -> list[str]:
    """Each email a mailbox shows, by recipient (the sandbox shows a Message-ID once)."""
    return sorted(address for mail in sandbox.received("email") for address in mail["rcpt_to"])


def emails_sent_here(outbox: list[Any]) -> list[str]:
    """The recipients of what this test process sent (Django's test outbox)."""
    return sorted(address for mail in outbox for address in mail.to)


def statements_sending_together(works: list[tuple[str, str] | Work]) -> tuple[list[bool | PutOff], int]:
    """What `deliveries_send_together` answers, and the SQL statements it ran (not
    counting BEGIN and COMMIT)."""
    with CaptureQueriesContext(connection) as captured:
        done = deliveries_send_together(works=works)
    control = ("BEGIN", "BEGIN IMMEDIATE", "COMMIT")
    return done, sum(query["sql"] not in control for query in captured.captured_queries)


def test_ten_works_sent_together_cost_the_statements_and_the_smtp_session_of_one(
    pipeline_settings: None, mailoutbox: list[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    # The events, their users, their preferences, one insert, one record of the sends;
    # every email over one connection, which the second batch reuses.
    sessions: list[object] = []
    real = email.get_connection

    def get_connection() -> object:
        sessions.append(real())
        return sessions[-1]

    monkeypatch.setattr(email, "get_connection", get_connection)
    monkeypatch.setattr(email, "_sessions", email._Sessions())  # none kept by an earlier test
    users = users_made(11, "together")
    events = [EventFactory.create(type="account.created", data={"user_id": user.pk}) for user in users]

    one = statements_sending_together([(str(events[0].id), "transactional_email")])
    ten = statements_sending_together([(str(event.id), "transactional_email") for event in events[1:]])

    assert one == ([True], 5)
    assert ten == ([True] * 10, 5)
    assert len(sessions) == 1
    assert [statuses(event) for event in events] == [{"transactional_email": "sent"}] * 11
    assert emails_sent_here(mailoutbox) == sorted(user.email for user in users)


def test_the_channels_of_a_batch_read_who_switched_them_off_in_one_statement(
    pipeline_settings: None, sandbox: SandboxClient, mailoutbox: list[Any]
) -> None:
    user = make_user("choosy", phone="+15553008888")
    Preference.objects.create(user=user, category="account", channel=Channel.ANALYTICS, enabled=False)
    event = EventFactory.create(type="account.created", data={"user_id": user.pk})
    works = [(str(event.id), name) for name in ("transactional_email", "product_analytics", "activity_feed")]

    with CaptureQueriesContext(connection) as captured:
        done = deliveries_send_together(works=works)

    assert done == [True] * 3
    assert statuses(event) == {"transactional_email": "sent", "product_analytics": "skipped", "activity_feed": "sent"}
    assert sum(Preference._meta.db_table in query["sql"] for query in captured.captured_queries) == 1


def test_works_a_batch_cannot_finish_are_left_to_run_alone(pipeline_settings: None, mailoutbox: list[Any]) -> None:
    sent, switched_off, without_address, gone, cancelled_for = users_made(5, "mixed")
    Preference.objects.create(user=switched_off, category="account", channel=Channel.EMAIL, enabled=False)
    get_user_model().objects.filter(pk=without_address.pk).update(email="")
    announcement = EventFactory.create(type="product.announcement", data={}, audience={"users": [sent.pk]})
    events = [EventFactory.create(type="account.created", data={"user_id": user.pk})
              for user in (sent, switched_off, without_address, gone)]
    get_user_model().objects.filter(pk=gone.pk).delete()
    cancelled = EventFactory.create(type="account.created", data={"user_id": cancelled_for.pk},
                                    cancelled_at=timezone.now())
    works = [
        *((str(event.id), "transactional_email") for event in events),
        (str(announcement.id), "announcement_email"),  # an audience: planned into chunks
        (str(events[0].id), "no_such_subscriber"),
        ("not-an-event-id", "transactional_email"),
        (str(cancelled.id), "transactional_email"),  # its task cancels it
    ]

    done = deliveries_send_together(works=works)
    again = EventFactory.create(type="account.created", data={"user_id": sent.pk})
    with override_settings(CARILLON_SEND_RATES={"email": 5}):  # sent at the channel's pace, by its task
        paced = deliveries_send_together(works=[(str(again.id), "transactional_email")])

    assert done == [True, True, False, False, False, False, False, False]
    assert paced == [False] and statuses(again) == {}
    assert statuses(cancelled) == {}
    assert statuses(events[0]) == {"transactional_email": "sent"}
    assert statuses(events[1]) == {"transactional_email": "skipped"}
    assert statuses(events[2]) == {"transactional_email": "failed"}  # refused: the task alone records it
    assert statuses(events[3]) == statuses(announcement) == {}
    assert emails_sent_here(mailoutbox) == [sent.email]
    with pytest.raises(ProviderPermanentError, match="has no email address"):
        delivery_send(event_id=str(events[2].id), subscriber_name="transactional_email")


def test_works_sent_together_and_run_again_send_nothing_twice(pipeline_settings: None, mailoutbox: list[Any]) -> None:
    # A message redelivered after its batch sent it (the worker died before the ack).
    users = users_made(3, "again")
    works = [(str(EventFactory.create(type="account.created", data={"user_id": user.pk}).id), "transactional_email")
             for user in users]
    assert deliveries_send_together(works=works) == [True] * 3

    assert deliveries_send_together(works=works) == [False] * 3
    for event_id, subscriber in works:
        delivery_send(event_id=event_id, subscriber_name=subscriber)

    assert Delivery.objects.filter(status=Delivery.Status.SENT).count() == 3
    assert len(mailoutbox) == 3


def test_analytics_wait_for_their_window_then_go_to_mixpanel_in_one_request(
    pipeline_settings: None, sandbox: SandboxClient
) -> None:
    users = users_made(8, "liked")
    events = [EventFactory.create(type="video.liked", data={"user_id": user.pk, "video_id": f"v{n}", "liked_by": "Bo"})
              for n, user in enumerate(users)]

    # Written and put off for their window, however many a batch holds.
    fresh = deliveries_send_together(works=[(str(event.id), "product_analytics") for event in events[:5]])

    assert fresh == [PutOff(1)] * 5
    assert [statuses(event) for event in events[:5]] == [{"product_analytics": "pending"}] * 5
    assert sandbox.inbox("mixpanel")["requests"] == 0

    # The first copy back from its window sends every pending one, whichever batch wrote
    # it, with its own batch's: the events, their users, their preferences, the waited
    # one's row, one insert; one flush (claim, read back, record the sends) and one read
    # of how these works' own ended.
    back, statements = statements_sending_together([Work(str(events[0].id), "product_analytics", waited=True),
                                                    (str(events[5].id), "product_analytics")])
    again = deliveries_send_together(works=[Work(str(events[1].id), "product_analytics", waited=True)])

    assert (back, statements) == ([True, True], 9)
    assert again == [True]  # the next copy back finds its delivery sent
    assert [statuses(event) for event in events[:6]] == [{"product_analytics": "sent"}] * 6
    inbox = sandbox.inbox("mixpanel")
    assert (inbox["accepted"], inbox["requests"]) == (6, 1)

    # A full request's worth pending goes at once.
    with override_settings(CARILLON_ANALYTICS_BATCH_SIZE=2):
        full = deliveries_send_together(works=[(str(event.id), "product_analytics") for event in events[6:]])

    assert full == [True, True]
    inbox = sandbox.inbox("mixpanel")
    assert (inbox["accepted"], inbox["requests"]) == (8, 2)


def test_a_lone_analytics_delivery_waits_for_its_window_without_a_task_run_of_its_own(
    start_pipeline_worker: Callable[..., ManagedProcess], pipeline_settings: None, sandbox: SandboxClient
) -> None:
    worker = start_pipeline_worker("lone-analytics")
    user = make_user("lone", phone="+15553009999")

    event = event_publish(type="video.liked", data={"user_id": user.pk, "video_id": "v1", "liked_by": "Bo"})

    wait_for(lambda: statuses(event) == {"activity_feed": "sent", "product_analytics": "sent"}, "both sent")
    task = OutboxMessage.objects.get(event=event, subscriber="product_analytics")
    lines = [line for line in worker.log().splitlines() if f"{event.id}.product_analytics.{task.pk}" in line]
    # Written and put off in one batch, flushed in another when it came back: the
    # ordinary task (Celery's "succeeded in 0.01s") never ran for it.
    assert sum("succeeded in a batch" in line for line in lines) == 2, lines
    assert not any(re.search(r"succeeded in \d", line) for line in lines), lines
    assert sandbox.inbox("mixpanel")["accepted"] == 1


def test_a_worker_killed_while_an_analytics_delivery_waits_for_its_window_loses_nothing(
    start_pipeline_worker: Callable[..., ManagedProcess], pipeline_settings: None, sandbox: SandboxClient
) -> None:
    # The put-off copy is in RabbitMQ before the first is acknowledged: the worker's death
    # does not take the delivery its first run wrote, which another worker sends, once.
    doomed = start_pipeline_worker("window-analytics", CARILLON_ANALYTICS_BATCH_WINDOW_SECONDS="5")
    user = make_user("held", phone="+15553009998")

    event = event_publish(type="video.liked", data={"user_id": user.pk, "video_id": "v2", "liked_by": "Cy"})

    wait_for(lambda: statuses(event) == {"activity_feed": "sent", "product_analytics": "pending"},
             "the analytics delivery written, waiting for its window")
    doomed.kill()
    start_pipeline_worker("after-the-kill")

    wait_for(lambda: statuses(event).get("product_analytics") == "sent", "the analytics delivery sent")
    assert sandbox.inbox("mixpanel")["accepted"] == 1
    assert Delivery.objects.get(event=event, subscriber="product_analytics").attempts == 1


def burst(users: list[Any]) -> list[Any]:
    """A password reset for each user, published at once (email and SMS each)."""
    with transaction.atomic():
        return [event_publish(type="password.reset_requested", data={"user_id": user.pk, "reset_url": RESET_URL})
                for user in users]


def held_by(worker: Any, events: list[Any]) -> bool:
    """Whether `celery inspect` lists email deliveries of these events as reserved or
    active on `worker`."""
    with worker_inspect(worker.hostname, timeout=2.0) as inspect:
        listed = [*((inspect.active() or {}).get(worker.hostname, [])),
                  *((inspect.reserved() or {}).get(worker.hostname, []))]
    ids = {str(event.id) for event in events}
    return any(task["name"] == "notifications.email.deliver" and task["args"][0] in ids for task in listed)


def all_sent(events: list[Any]) -> bool:
    """Each reset's email sent, its SMS sent (or already confirmed delivered by Twilio)."""
    return all(
        statuses(event).get("transactional_email") == "sent" and statuses(event).get("security_sms") in ("sent", "delivered")
        for event in events
    )


def test_a_worker_that_falls_behind_sends_what_it_holds_together_each_once(
    start_pipeline_worker: Callable[..., ManagedProcess], pipeline_settings: None, sandbox: SandboxClient
) -> None:
    worker = start_pipeline_worker("together")
    sandbox.set_knobs("email", latency_ms=100)  # the first sends are slow: the rest wait in the worker
    users = users_made(20, "burst")

    events = burst(users)

    # While they wait or are sent, `celery inspect` shows them (docs/architecture.md).
    wait_for(lambda: held_by(worker, events), "the worker showing the resets it holds")
    wait_for(lambda: all_sent(events), "every reset sent by email and SMS", timeout=60)
    assert emails_seen(sandbox) == sorted(user.email for user in users)
    assert sorted(sms["to"] for sms in sandbox.received("sms")) == [f"+1555300{n:04d}" for n in range(20)]
    # Deliveries sent together were created together: fewer attempt start times than emails.
    emails = Delivery.objects.filter(subscriber="transactional_email", event__in=events)
    assert emails.values("attempt_started_at").distinct().count() < 20
    assert set(emails.values_list("attempts", flat=True)) == {1}


def test_a_pool_process_killed_mid_batch_loses_nothing_and_shows_nobody_a_duplicate(
    start_pipeline_worker: Callable[..., ManagedProcess], pipeline_settings: None, sandbox: SandboxClient
) -> None:
    worker = start_pipeline_worker("doomed-batch")
    sandbox.set_knobs("email", latency_ms=400)
    users = users_made(20, "killed")
    events = burst(users)

    def batch_under_way() -> bool:
        started = Delivery.objects.filter(subscriber="transactional_email", status=Delivery.Status.SENDING)
        return started.values("attempt_started_at").distinct().count() < started.count() and bool(
            sandbox.received("email"))

    wait_for(batch_under_way, "a batch of emails half sent")
    # The pool processes die, as an OOM kill would take them; the worker's main process,
    # which holds the messages, lives on and runs each alone.
    pool = subprocess.run(["pgrep", "-P", str(worker.process.pid)], capture_output=True, text=True, check=False)
    for pid in map(int, pool.stdout.split()):
        os.kill(pid, signal.SIGKILL)
    sandbox.set_knobs("email", latency_ms=0)

    wait_for(lambda: all_sent(events), "every reset sent after the kill", timeout=90)
    assert emails_seen(sandbox) == sorted(user.email for user in users)
    assert len(sandbox.received("sms")) == 20
    assert worker.process.poll() is None
