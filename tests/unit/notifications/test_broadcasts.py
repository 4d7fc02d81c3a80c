"""Planning a broadcast: every recipient in exactly one chunk, every chunk's task in the
outbox exactly once, whatever dies or runs twice."""

from typing import Any

import pytest
from django.test import override_settings
from django.utils import timezone

from notifications import broadcasts
from notifications.broadcasts import broadcast_plan
from notifications.channels import Channel
from notifications.models import Broadcast, DeliveryChunk, Event, OutboxMessage
from notifications.subscribers import Subscriber

pytestmark = pytest.mark.django_db

SUBSCRIBER = Subscriber("news_email", Channel.EMAIL, ("account.created",))


@pytest.fixture
def users(django_user_model: Any) -> list[Any]:
    return [django_user_model.objects.create_user(f"reader{i}") for i in range(5)]


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
