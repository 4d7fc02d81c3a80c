"""Clean-up removes finished work past retention, in bounded batches, and never what
is still needed."""

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from django.test import override_settings
from django.utils import timezone

from notifications.cleanup import cleanup_run
from notifications.models import Delivery, Event, FailedJob, Notification, OutboxMessage

pytestmark = pytest.mark.django_db

NOW = datetime(2026, 11, 23, 3, 30, tzinfo=UTC)
OLD = NOW - timedelta(days=400)
RECENT = NOW - timedelta(days=1)


def event() -> Event:
    return Event.objects.create(type="video.liked", version=1, occurred_at=timezone.now(), data={})


def delivery(status: str, when: datetime, recipient: str) -> Delivery:
    row = Delivery.objects.create(
        event=event(), subscriber="activity_feed", channel="inapp", recipient=recipient, status=status
    )
    Delivery.objects.filter(pk=row.pk).update(updated_at=when)
    return row


def outbox(published_at: datetime | None, created: datetime) -> OutboxMessage:
    row = OutboxMessage.objects.create(event=event(), kind="envelope", payload={}, published_at=published_at)
    OutboxMessage.objects.filter(pk=row.pk).update(created_at=created)
    return row


def remaining(model: Any) -> set[int]:
    return set(model.objects.values_list("pk", flat=True))


def test_cleanup_deletes_only_finished_deliveries_past_retention() -> None:
    gone = [delivery(status, OLD, f"user:{n}") for n, status in enumerate(["sent", "delivered", "skipped", "failed"])]
    pending = delivery("pending", OLD, "user:10")
    sending = delivery("sending", OLD, "user:11")
    recent = delivery("sent", RECENT, "user:12")
    open_failure = delivery("failed", OLD, "user:13")
    FailedJob.objects.create(task_name="t", queue="carillon.inapp", delivery=open_failure, error_class="E",
                             error_message="boom")
    FailedJob.objects.create(task_name="t", queue="carillon.inapp", delivery=gone[3], error_class="E",
                             error_message="boom", state="discarded")

    result = cleanup_run(now=NOW)

    assert result.deliveries == 4
    assert remaining(Delivery) == {pending.pk, sending.pk, recent.pk, open_failure.pk}
    assert FailedJob.objects.count() == 2  # failed jobs stay, for their trail


def test_cleanup_never_deletes_an_unpublished_outbox_row() -> None:
    published_old = outbox(OLD, OLD)
    unpublished_old = outbox(None, OLD)
    published_recently = outbox(RECENT, OLD)

    result = cleanup_run(now=NOW)

    assert result.outbox_messages == 1
    assert published_old.pk not in remaining(OutboxMessage)
    assert remaining(OutboxMessage) == {unpublished_old.pk, published_recently.pk}


def test_cleanup_deletes_read_notifications_past_retention_only(django_user_model: Any) -> None:
    ada = django_user_model.objects.create_user("ada")
    read_old, read_recently, unread_old = (
        Notification.objects.create(user=ada, kind="k", title=title) for title in ("a", "b", "c")
    )
    Notification.objects.filter(pk=read_old.pk).update(read_at=OLD, created_at=OLD)
    Notification.objects.filter(pk=read_recently.pk).update(read_at=RECENT, created_at=OLD)
    Notification.objects.filter(pk=unread_old.pk).update(created_at=OLD)

    assert cleanup_run(now=NOW).notifications == 1
    assert remaining(Notification) == {read_recently.pk, unread_old.pk}


@override_settings(CARILLON_CLEANUP_BATCH_SIZE=2, CARILLON_CLEANUP_MAX_BATCHES=2)
def test_cleanup_works_in_bounded_batches_and_leaves_the_rest_for_the_next_run() -> None:
    for _ in range(5):
        outbox(OLD, OLD)

    first, second, third = (cleanup_run(now=NOW).outbox_messages for _ in range(3))

    assert (first, second, third) == (4, 1, 0)
    assert not OutboxMessage.objects.exists()
