"""Broadcasts against the real RabbitMQ, Redis, database and the sandbox's SMTP server:
one receipt per recipient and channel whatever dies, the bulk lane never in the way of a
password reset, a provider's rate limit slowing sends down without losing one, cancel."""

import uuid
from collections.abc import Callable
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.db import transaction

from notifications.channels import Channel
from notifications.models import Delivery, Event, FailedJob, Notification, Preference, Recipient
from notifications.selectors import event_progress
from notifications.services.broadcasts import event_cancel
from notifications.services.events import event_publish
from sandbox.client import SandboxClient
from tests.integration.conftest import BULK_QUEUES, CHANNEL_QUEUES, CeleryWorker, wait_until_settled
from tests.processes import ManagedProcess, rabbitmqctl, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]



def members(count: int) -> tuple[str, list[Any]]:
    """A fresh group of `count` users with email addresses."""
    User = get_user_model()  # noqa: N806
    tag = uuid.uuid4().hex[:8]
    users = User.objects.bulk_create(
        [User(username=f"member-{tag}-{n}", email=f"member-{tag}-{n}@example.com") for n in range(count)]
    )
    group = Group.objects.create(name=f"group-{tag}")
    group.user_set.add(*users)
    return group.name, users


def announce(group: str) -> Event:
    with transaction.atomic():
        return event_publish(
            type="product.announcement", data={"title": "New", "body": "Something new"},
            audience={"audience": "group_members", "params": {"group": group}},
        )


def finished(event: Event, channel: str, total: int) -> bool:
    entry = event_progress(event=event).get(channel, {})
    done = sum(entry.get(status, 0) for status in ("sent", "skipped", "failed", "cancelled"))
    return bool(entry.get("resolved")) and done == total


def received_once(sandbox: SandboxClient) -> list[str]:
    """Each email's recipient, as the mailbox shows them (a resend with the same Message-ID
    is collapsed by the sandbox, as by a real mailbox); no address twice."""
    addresses = [item["rcpt_to"][0] for item in sandbox.received("email")]
    assert len(addresses) == len(set(addresses)), "an address received the announcement twice"
    return addresses


def test_each_member_gets_it_once_on_each_channel_while_a_bulk_worker_is_killed_mid_chunk(
    start_pipeline_worker: Callable[..., ManagedProcess], sandbox: SandboxClient, pipeline_settings: None
) -> None:
    group, users = members(300)
    opted_out = users[:10]
    Preference.objects.bulk_create(
        Preference(user=user, category="product", channel=Channel.EMAIL, enabled=False) for user in opted_out
    )
    sandbox.set_knobs("email", latency_ms=5)  # long enough to be killed with chunks under way
    first = start_pipeline_worker("bulk", queues=BULK_QUEUES, CARILLON_BROADCAST_CHUNK_SIZE="50")
    event = announce(group)

    wait_for(lambda: len(sandbox.received("email")) >= 60, "a first part of the broadcast sent", timeout=60)
    first.kill()
    assert len(sandbox.received("email")) < 290  # killed with emails still to send
    start_pipeline_worker("bulk-again", queues=BULK_QUEUES, CARILLON_BROADCAST_CHUNK_SIZE="50")
    wait_for(lambda: finished(event, "email", 300) and finished(event, "inapp", 300), "the broadcast done", 180)

    expected = sorted(user.email for user in users[10:])
    assert sorted(received_once(sandbox)) == expected
    assert event_progress(event=event)["email"]["skipped"] == 10
    notified = Notification.objects.filter(event=event).values_list("user_id", flat=True)
    assert sorted(notified) == sorted(user.pk for user in users)  # one each, opted-out of email or not


def test_through_postmark_a_chunk_is_one_request_and_only_the_refused_recipient_fails(
    start_pipeline_worker: Callable[..., CeleryWorker], sandbox: SandboxClient, pipeline_settings: None
) -> None:
    group, users = members(120)
    inactive = get_user_model().objects.create_user("bounced", email="bounced@inactive.example.com")
    Group.objects.get(name=group).user_set.add(inactive)
    bulk = start_pipeline_worker(
        "bulk", queues=BULK_QUEUES, CARILLON_BROADCAST_CHUNK_SIZE="50",
        POSTMARK_SERVER_TOKEN="sandbox-postmark-token", POSTMARK_API_BASE_URL=sandbox.url,
    )
    event = announce(group)
    wait_for(lambda: finished(event, "email", 121), "the broadcast done", 120)
    wait_until_settled(bulk)

    mails = sandbox.received("email")
    assert sorted(received_once(sandbox)) == sorted(user.email for user in users)
    assert {(mail["via"], mail["stream"]) for mail in mails} == {("postmark", "broadcast")}
    assert sandbox.inbox("email")["requests"] == 3  # 121 recipients in chunks of 50
    assert all(f"Hello {user.username}" in mail["text"] for user, mail in zip(
        sorted(users, key=lambda u: u.email), sorted(mails, key=lambda m: m["to"]), strict=True))
    refused = Delivery.objects.get(event=event, channel="email", user_id=inactive.pk)
    assert refused.status == Delivery.Status.FAILED and "ErrorCode 406" in refused.last_error
    [failed] = FailedJob.objects.filter(event=event)
    assert failed.error_message.startswith(f"1 of 21 deliveries refused: delivery {refused.pk}: ")  # the last chunk


def test_rabbitmq_restarted_mid_broadcast_loses_no_chunk_and_sends_none_twice(
    start_pipeline_worker: Callable[..., ManagedProcess], sandbox: SandboxClient, pipeline_settings: None,
    relay_process: ManagedProcess,
) -> None:
    group, users = members(300)
    sandbox.set_knobs("email", latency_ms=5)
    start_pipeline_worker("bulk", queues=BULK_QUEUES, CARILLON_BROADCAST_CHUNK_SIZE="20")
    event = announce(group)
    wait_for(lambda: len(sandbox.received("email")) >= 40, "a first part of the broadcast sent", timeout=60)

    rabbitmqctl("stop_app")  # chunk tasks in flight, chunks still to plan and publish
    rabbitmqctl("start_app")
    wait_for(lambda: finished(event, "email", 300) and finished(event, "inapp", 300), "the broadcast done", 180)

    assert sorted(received_once(sandbox)) == sorted(user.email for user in users)
    assert Notification.objects.filter(event=event).count() == 300


def test_a_password_reset_is_not_queued_behind_a_broadcast(
    start_pipeline_worker: Callable[..., CeleryWorker], sandbox: SandboxClient, pipeline_settings: None
) -> None:
    group, users = members(400)
    resetting = get_user_model().objects.create_user("resetting", email="resetting@example.com")
    Recipient.objects.create(user=resetting, phone_number="+15005550006")
    sandbox.set_knobs("email", latency_ms=30)  # the broadcast takes seconds of SMTP
    bulk = start_pipeline_worker("bulk", queues=BULK_QUEUES, CARILLON_BROADCAST_CHUNK_SIZE="50")
    start_pipeline_worker("transactional", queues=CHANNEL_QUEUES)
    broadcast = announce(group)
    wait_for(lambda: len(sandbox.received("email")) >= 20, "the broadcast under way", timeout=60)

    with transaction.atomic():
        reset = event_publish(
            type="password.reset_requested", data={"user_id": resetting.pk, "reset_url": "https://example.com/r"}
        )
    wait_for(lambda: Delivery.objects.filter(event=reset, channel="email", status="sent").exists(), "the reset sent", 30)

    assert event_progress(event=broadcast)["email"]["sent"] < 400  # the broadcast was still going
    # What the broadcast would still send proves nothing more here: the other tests see
    # broadcasts to the end.
    event_cancel(event_id=str(broadcast.pk))
    wait_until_settled(bulk, timeout=120)
    addresses = received_once(sandbox)
    assert "resetting@example.com" in addresses
    assert len(addresses) == event_progress(event=broadcast)["email"]["sent"] + 1


def test_a_providers_rate_limit_slows_the_broadcast_down_and_loses_nothing(
    start_pipeline_worker: Callable[..., ManagedProcess], sandbox: SandboxClient, pipeline_settings: None
) -> None:
    group, users = members(60)
    sandbox.set_knobs("email", rate_limit_per_second=15)  # past it, SMTP 421: come back later
    # Each 421 pauses email for every worker (10 s by default; 1 s here).
    start_pipeline_worker("bulk", queues=BULK_QUEUES, CARILLON_BROADCAST_CHUNK_SIZE="30",
                          CARILLON_SMTP_BUSY_PAUSE_SECONDS="1")
    event = announce(group)

    wait_for(lambda: finished(event, "email", 60), "the broadcast done", 180)

    assert sorted(received_once(sandbox)) == sorted(user.email for user in users)
    assert sandbox.inbox("email")["rate_limited"] > 0  # the limit was met, and its refusals retried


def test_paced_to_the_providers_rate_a_broadcast_meets_no_refusal(
    start_pipeline_worker: Callable[..., ManagedProcess], sandbox: SandboxClient, pipeline_settings: None
) -> None:
    group, users = members(60)
    sandbox.set_knobs("email", rate_limit_per_second=15)
    # Two worker processes share one bucket in Redis: together they keep under the limit.
    start_pipeline_worker("bulk", queues=BULK_QUEUES, CARILLON_BROADCAST_CHUNK_SIZE="30", CARILLON_SEND_RATES="email=12")
    event = announce(group)

    wait_for(lambda: finished(event, "email", 60), "the broadcast done", 180)

    assert sorted(received_once(sandbox)) == sorted(user.email for user in users)
    assert sandbox.inbox("email")["rate_limited"] == 0
    # Paced, not merely lucky: after a burst of one second's worth, 12 a second at most
    # (4 s for the rest; a second of slack for when the first and last reached the sandbox).
    times = sorted(mail["received_at"] for mail in sandbox.received("email"))
    assert times[-1] - times[0] >= (60 - 12) / 12 - 1


def test_cancel_stops_what_was_not_sent(
    start_pipeline_worker: Callable[..., CeleryWorker], sandbox: SandboxClient, pipeline_settings: None
) -> None:
    group, users = members(400)
    worker = start_pipeline_worker(
        "bulk", queues=BULK_QUEUES, CARILLON_BROADCAST_CHUNK_SIZE="20", CARILLON_SEND_RATES="email=40"
    )
    event = announce(group)
    wait_for(lambda: len(sandbox.received("email")) >= 40, "a first part of the broadcast sent", timeout=60)

    event_cancel(event_id=str(event.pk))
    wait_until_settled(worker, timeout=120)  # every chunk task ran: nothing more can be sent

    sent = len(received_once(sandbox))
    progress = event_progress(event=event)["email"]
    assert 40 <= sent < 400
    assert progress["sent"] == sent and progress["pending"] == progress["sending"] == 0
