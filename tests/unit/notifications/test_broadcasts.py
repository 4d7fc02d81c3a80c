"""Planning a broadcast: every recipient in exactly one chunk, every chunk's task in the
outbox exactly once, whatever dies or runs twice."""

from typing import Any
from unittest.mock import patch

import pytest
from django.contrib.auth.models import Permission
from django.core import mail
from django.test import override_settings
from django.utils import timezone
from rest_framework.test import APIClient

from core.errors import ProviderPermanentError, ProviderTransientError
from notifications.api import serializers
from notifications.channels import Channel
from notifications.exceptions import InvalidEvent
from notifications.models import (
    Broadcast,
    Delivery,
    DeliveryChunk,
    Event,
    Notification,
    OutboxMessage,
    Preference,
    Topic,
    TopicSubscription,
)
from notifications.providers import inapp, senders
from notifications.selectors import event_progress
from notifications.services import broadcasts, deliveries
from notifications.services.broadcasts import broadcast_plan, event_cancel
from notifications.services.deliveries import delivery_send
from notifications.services.events import event_publish
from notifications.services.failed_jobs import failed_job_record, failed_job_replay
from notifications.subscribers import Subscriber

pytestmark = pytest.mark.django_db

SUBSCRIBER = Subscriber("news_email", Channel.EMAIL, ("account.created",))


@pytest.fixture
def users(django_user_model: Any) -> list[Any]:
    return [django_user_model.objects.create_user(f"reader{i}", email=f"reader{i}@example.com") for i in range(5)]


@pytest.fixture
def event(users: list[Any]) -> Event:
    return Event.objects.create(
        type="account.created", version=1, data={"user_id": users[0].pk}, occurred_at=timezone.now(),
        audience={"users": [user.pk for user in users]},
    )


def chunks(event: Event) -> list[list[int]]:
    return [chunk.user_ids for chunk in DeliveryChunk.objects.filter(broadcast__event=event).order_by("index")]


@override_settings(CARILLON_BROADCAST_CHUNK_SIZE=2)
def test_every_recipient_is_in_one_chunk_and_each_chunk_has_one_task(event: Event, users: list[Any]) -> None:
    broadcast = broadcast_plan(event=event, subscriber=SUBSCRIBER)
    again = broadcast_plan(event=event, subscriber=SUBSCRIBER)

    ids = [user.pk for user in users]
    assert chunks(event) == [ids[:2], ids[2:4], ids[4:]]
    assert (broadcast.recipients, broadcast.chunks, broadcast.planned_at is not None) == (5, 3, True)
    assert again.pk == broadcast.pk and again.chunks == 3
    tasks = OutboxMessage.objects.filter(event=event, kind=OutboxMessage.Kind.TASK).order_by("pk")
    assert [row.payload for row in tasks] == [
        {"task": "notifications.email.deliver_chunk", "args": [str(event.pk), "news_email", index],
         "queue": "carillon.email"}
        for index in range(3)
    ]


@override_settings(CARILLON_BROADCAST_CHUNK_SIZE=2)
def test_a_planner_that_dies_midway_is_resumed_after_its_last_chunk(
    event: Event, users: list[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    write = broadcasts._chunk_write
    calls = 0

    def dies_on_the_second_chunk(*args: Any, **kwargs: Any) -> Broadcast:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise SystemExit("worker killed")
        return write(*args, **kwargs)

    monkeypatch.setattr(broadcasts, "_chunk_write", dies_on_the_second_chunk)
    with pytest.raises(SystemExit):
        broadcast_plan(event=event, subscriber=SUBSCRIBER)
    assert len(chunks(event)) == 1
    monkeypatch.setattr(broadcasts, "_chunk_write", write)

    broadcast_plan(event=event, subscriber=SUBSCRIBER)

    ids = [user.pk for user in users]
    assert chunks(event) == [ids[:2], ids[2:4], ids[4:]]
    assert OutboxMessage.objects.filter(event=event, kind=OutboxMessage.Kind.TASK).count() == 3


@override_settings(CARILLON_BROADCAST_CHUNK_SIZE=2)
def test_a_planner_that_loses_a_race_for_a_chunk_stops_and_leaves_it_to_the_winner(
    event: Event, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The loser read the broadcast before the winner planned it all.
    winner = broadcast_plan(event=event, subscriber=SUBSCRIBER)
    stale = Broadcast(pk=winner.pk, event=event, subscriber=winner.subscriber, channel=winner.channel)
    monkeypatch.setattr(Broadcast.objects, "get_or_create", lambda **kwargs: (stale, False))

    loser = broadcast_plan(event=event, subscriber=SUBSCRIBER)

    assert loser.chunks == 3 and len(chunks(event)) == 3
    assert OutboxMessage.objects.filter(event=event, kind=OutboxMessage.Kind.TASK).count() == 3


@override_settings(CARILLON_BROADCAST_CHUNK_SIZE=2)
def test_a_cancelled_event_plans_no_more_chunks(event: Event) -> None:
    Event.objects.filter(pk=event.pk).update(cancelled_at=timezone.now())

    broadcast = broadcast_plan(event=event, subscriber=SUBSCRIBER)

    assert broadcast.chunks == 0 and broadcast.planned_at is None
    assert not OutboxMessage.objects.filter(event=event).exists()
    # Its recipients will never all be resolved: progress says so, and cancelled_at why.
    assert [entry["resolved"] for entry in event_progress(event=event).values()] == [False]


@pytest.mark.parametrize("subscribed", [False, True])
def test_a_topic_with_nobody_left_to_tell_plans_nothing_and_is_resolved(
    users: list[Any], subscribed: bool
) -> None:
    # Nobody subscribed, or the topic deleted after the event was published.
    topic = Topic.objects.create(scope="", key="launch")
    if subscribed:
        TopicSubscription.objects.create(topic=topic, user=users[0])
    event = Event.objects.create(
        type="account.created", version=1, data={}, occurred_at=timezone.now(), audience={"topic": "launch"}
    )
    if subscribed:
        topic.delete()

    broadcast = broadcast_plan(event=event, subscriber=SUBSCRIBER)

    assert broadcast.chunks == 0 and broadcast.planned_at is not None
    assert not OutboxMessage.objects.filter(event=event).exists()
    assert [(entry["recipients"], entry["resolved"]) for entry in event_progress(event=event).values()] == [(0, True)]


def _api(user: Any) -> APIClient:
    client = APIClient()
    client.force_authenticate(user)
    return client


def test_the_event_shows_its_progress_per_channel_and_only_its_first_deliveries(
    event: Event, users: list[Any], django_user_model: Any
) -> None:
    publisher = django_user_model.objects.create_user("backend")
    Event.objects.filter(pk=event.pk).update(publisher=publisher)
    Broadcast.objects.create(event=event, subscriber="news_email", channel=Channel.EMAIL, recipients=5, chunks=1)
    statuses = ["sent", "sent", "failed", "skipped", "pending"]
    Delivery.objects.bulk_create(
        Delivery(event=event, subscriber="news_email", channel=Channel.EMAIL, recipient=f"user:{user.pk}",
                 user=user, status=status)
        for user, status in zip(users, statuses, strict=True)
    )
    Delivery.objects.create(event=event, subscriber="feed", channel=Channel.INAPP, recipient="user:1", status="sent")

    with patch.object(serializers, "EVENT_DELIVERIES_SHOWN", 4):
        shown = _api(publisher).get(f"/api/events/{event.pk}/").json()

    assert shown["progress"]["email"] == {
        "recipients": 5, "resolved": False, "pending": 1, "sending": 0, "sent": 2, "delivered": 0,
        "undelivered": 0, "failed": 1, "skipped": 1, "cancelled": 0,
    }
    assert shown["progress"]["inapp"]["recipients"] == 1 and shown["progress"]["inapp"]["resolved"] is True
    assert len(shown["deliveries"]) == 4 and shown["cancelled_at"] is None


def test_cancel_stops_what_was_not_sent_and_only_its_publisher_or_an_operator_may(
    event: Event, users: list[Any], django_user_model: Any
) -> None:
    publisher = django_user_model.objects.create_user("backend")
    Event.objects.filter(pk=event.pk).update(publisher=publisher)
    Delivery.objects.create(event=event, subscriber="news_email", channel=Channel.EMAIL, recipient="user:1",
                            status=Delivery.Status.SENT)
    Delivery.objects.create(event=event, subscriber="news_email", channel=Channel.EMAIL, recipient="user:2")
    viewer = django_user_model.objects.create_user("viewer")
    viewer.user_permissions.add(Permission.objects.get(codename="view_event"))
    operator = django_user_model.objects.create_user("operator")
    operator.user_permissions.add(Permission.objects.get(codename="cancel_event"))
    url = f"/api/events/{event.pk}/cancel/"

    assert _api(users[1]).post(url).status_code == 404
    assert _api(viewer).post(url).status_code == 403
    assert not Event.objects.filter(cancelled_at__isnull=False).exists()
    first = _api(publisher).post(url)
    again = _api(operator).post(url)

    assert first.status_code == 200 and first.json()["cancelled"] == 1
    assert again.json() == {**first.json(), "cancelled": 0}
    assert sorted(Delivery.objects.values_list("status", flat=True)) == ["cancelled", "sent"]
    assert broadcast_plan(event=Event.objects.get(pk=event.pk), subscriber=SUBSCRIBER).chunks == 0


def test_the_admin_shows_a_broadcasts_progress_and_an_operator_cancels_it(
    event: Event, admin_client: Any
) -> None:
    Broadcast.objects.create(event=event, subscriber="news_email", channel=Channel.EMAIL, recipients=5, chunks=1)
    Delivery.objects.create(event=event, subscriber="news_email", channel=Channel.EMAIL, recipient="user:2")

    page = admin_client.get(f"/admin/notifications/event/{event.pk}/change/").content.decode()
    answer = admin_client.post(
        "/admin/notifications/event/", {"action": "cancel_selected", "_selected_action": [str(event.pk)]}
    )

    assert "5 so far" in page and "pending 1" in page
    assert answer.status_code == 302
    assert Event.objects.get(pk=event.pk).cancelled_at is not None
    assert Delivery.objects.get().status == Delivery.Status.CANCELLED


# --- Sending chunks (the provider is Django's in-memory mailbox; pushes are caught) -------


@pytest.fixture
def pushes(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str, Any]]:
    caught: list[tuple[str, str, Any]] = []

    def publish(messages: list[tuple[str, str, Any]]) -> list[int]:  # Redis is another process
        caught.extend(messages)
        return list(range(len(caught) - len(messages) + 1, len(caught) + 1))

    monkeypatch.setattr(inapp, "realtime_publish_many", publish)
    return caught


def _announce(users: list[Any]) -> Event:
    return event_publish(
        type="product.announcement", data={"title": "New", "body": "Something new"},
        audience={"users": [user.pk for user in users]},
    )


def _send_all(event: Event, subscriber: str) -> None:
    delivery_send(event_id=str(event.pk), subscriber_name=subscriber)  # plans the chunks
    for chunk in DeliveryChunk.objects.filter(broadcast__event=event, broadcast__subscriber=subscriber):
        delivery_send(event_id=str(event.pk), subscriber_name=subscriber, chunk=chunk.index)


@override_settings(CARILLON_BROADCAST_CHUNK_SIZE=2)
def test_an_announcement_reaches_each_recipient_once_on_each_channel_and_respects_preferences(
    users: list[Any], pushes: list[tuple[str, str, Any]]
) -> None:
    Preference.objects.create(user=users[1], category="product", channel=Channel.EMAIL, enabled=False)
    event = _announce(users)
    assert set(OutboxMessage.objects.filter(event=event, kind="task").values_list("queue", flat=True)) == {
        "carillon.email.bulk", "carillon.inapp.bulk"
    }

    _send_all(event, "announcement_email")
    _send_all(event, "announcement_feed")
    _send_all(event, "announcement_email")  # every task run again: a redelivery
    _send_all(event, "announcement_feed")

    assert sorted(message.to[0] for message in mail.outbox) == sorted(u.email for u in users if u != users[1])
    assert sorted(topic for topic, _, _ in pushes) == sorted(f"user:{u.pk}" for u in users)
    assert Notification.objects.count() == 5
    progress = event_progress(event=Event.objects.get(pk=event.pk))
    assert (progress["email"]["sent"], progress["email"]["skipped"], progress["inapp"]["sent"]) == (4, 1, 5)


def _email_failing(monkeypatch: pytest.MonkeyPatch, errors: dict[str, Exception]) -> None:
    """Email answers these addresses with their error and really sends the rest, until
    the monkeypatch is undone."""
    real = senders.SENDERS[Channel.EMAIL]

    def failing(*, items: list[Any]) -> list[Any]:
        sent = iter(real(items=[i for i in items if i.user.email not in errors]))
        return [errors[i.user.email] if i.user.email in errors else next(sent) for i in items]

    monkeypatch.setitem(senders.SENDERS, Channel.EMAIL, failing)


@override_settings(CARILLON_BROADCAST_CHUNK_SIZE=5)
def test_a_recipient_who_switches_the_channel_off_before_the_retry_is_skipped_not_sent(
    users: list[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    event = _announce(users)
    delivery_send(event_id=str(event.pk), subscriber_name="announcement_email")
    later = users[2].email
    with monkeypatch.context() as patched:
        _email_failing(patched, {later: ProviderTransientError("451 try later")})
        with pytest.raises(ProviderTransientError):
            delivery_send(event_id=str(event.pk), subscriber_name="announcement_email", chunk=0)
    # Between the attempt and its retry, the user turns product email off.
    Preference.objects.create(user=users[2], category="product", channel=Channel.EMAIL, enabled=False)
    delivery_send(event_id=str(event.pk), subscriber_name="announcement_email", chunk=0)

    assert later not in [message.to[0] for message in mail.outbox]
    assert len(mail.outbox) == 4
    skipped = Delivery.objects.get(event=event, user=users[2])
    assert (skipped.status, skipped.last_error) == ("skipped", "email is off for product")


@override_settings(CARILLON_BROADCAST_CHUNK_SIZE=5)
def test_a_partial_failure_retries_only_the_unsent_and_a_refusal_replays_only_its_chunk(
    users: list[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    event = _announce(users)
    delivery_send(event_id=str(event.pk), subscriber_name="announcement_email")
    refused, unlucky = users[1].email, users[3].email
    with monkeypatch.context() as patched:
        _email_failing(patched, {refused: ProviderPermanentError("550 no such mailbox"),
                                 unlucky: ProviderTransientError("451 try later")})
        with pytest.raises(ProviderTransientError, match="1 of 5 deliveries to retry"):
            delivery_send(event_id=str(event.pk), subscriber_name="announcement_email", chunk=0)
    with pytest.raises(ProviderPermanentError, match="1 of 5 deliveries refused"):
        delivery_send(event_id=str(event.pk), subscriber_name="announcement_email", chunk=0)  # the retry
    assert sorted(message.to[0] for message in mail.outbox) == sorted(u.email for u in users if u.email != refused)

    failed_job, _ = failed_job_record(
        task_name="notifications.email.deliver_chunk", task_id="t", queue="carillon.email.bulk",
        args=[str(event.pk), "announcement_email", 0], error=ProviderPermanentError("refused"), traceback="",
        attempts=2,
    )
    failed_job_replay(failed_job_id=failed_job.pk, user_id=None)
    delivery_send(event_id=str(event.pk), subscriber_name="announcement_email", chunk=0)  # the replay's run

    assert sorted(message.to[0] for message in mail.outbox) == sorted(u.email for u in users)
    assert Delivery.objects.filter(status=Delivery.Status.SENT).count() == 5


@override_settings(CARILLON_BROADCAST_CHUNK_SIZE=2)
def test_a_chunk_of_a_cancelled_event_sends_nothing(users: list[Any]) -> None:
    event = _announce(users)
    delivery_send(event_id=str(event.pk), subscriber_name="announcement_email")
    event_cancel(event_id=str(event.pk))

    delivery_send(event_id=str(event.pk), subscriber_name="announcement_email", chunk=1)

    assert mail.outbox == []
    assert list(Delivery.objects.values_list("status", flat=True)) == ["cancelled", "cancelled"]


def test_a_bulk_event_without_an_audience_is_refused(users: list[Any]) -> None:
    with pytest.raises(InvalidEvent, match="give audience"):
        event_publish(type="product.announcement", data={"title": "New", "body": "b"})
    assert not Event.objects.exists()


@override_settings(CARILLON_BROADCAST_CHUNK_SIZE=5, CARILLON_SEND_RATES={"email": 2.0})
def test_a_chunk_sent_at_the_channels_pace_stops_where_the_event_is_cancelled(
    users: list[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    event = _announce(users)
    delivery_send(event_id=str(event.pk), subscriber_name="announcement_email")
    taken = 0

    def take(**kwargs: Any) -> None:  # Redis's bucket stands aside: the second second is cancelled
        nonlocal taken
        taken += 1
        if taken == 2:
            event_cancel(event_id=str(event.pk))

    monkeypatch.setattr(deliveries, "send_rate_take", take)
    delivery_send(event_id=str(event.pk), subscriber_name="announcement_email", chunk=0)

    assert len(mail.outbox) == 2  # the first second's worth
    assert sorted(Delivery.objects.values_list("status", flat=True)) == ["cancelled"] * 3 + ["sent"] * 2
