"""The owner's ack timeouts against its shard queues, without a broker: the ticks it
publishes are captured, and read back by handing them to it as inputs."""

from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone

from rooms import owner as owner_module
from rooms.machine import Provider, Queued, RoomState, Send
from rooms.owner import MARK_AGAIN_S, Owner

SHARD = 3


class Ticks:
    """Stands in for the owner's tick producer: keeps what it publishes."""

    def __init__(self) -> None:
        self.published: list[dict[str, Any]] = []

    def publish(self, body: dict[str, Any], **options: Any) -> None:
        self.published.append(body)


@pytest.fixture
def owner() -> Iterator[Owner]:
    owner = Owner(send_threads=1)
    owner.ticks = Ticks()  # type: ignore[assignment]
    owner.epochs[SHARD] = 1  # held: its inputs are applied without taking it
    owner.machine.providers = {1: Provider(ack_timeout_ms=1000, resends=0)}
    try:
        yield owner
    finally:
        owner.close()


def in_flight(owner: Owner, room_id: int, sent_ago: float = 2.0) -> Send:
    """A room whose message was sent `sent_ago` s ago: past 1 s, its ack timeout is due."""
    room = RoomState(room_id, SHARD, provider_id=1, recipient=f"r{room_id}", known=0)
    queued = Queued(1, room_id * 10, f"k{room_id}", "hi")
    owner.machine.enqueued(room, queued, timezone.now() - timedelta(seconds=sent_ago))
    send = Send(room_id, queued.message_id, 1)
    owner.machine.sent(send, "chm", timezone.now() - timedelta(seconds=sent_ago))
    owner.machine.take_record()
    return send


def published(owner: Owner) -> list[dict[str, Any]]:
    return owner.ticks.published  # type: ignore[union-attr]


def test_a_due_ack_timeout_fires_only_once_a_mark_of_its_own_is_read_back_and_one_mark_serves_its_shard(
    owner: Owner,
) -> None:
    sends = [in_flight(owner, 1), in_flight(owner, 2)]

    owner._fire_timers()
    owner._fire_timers()

    assert [(tick["shard"], tick["owner"]) for tick in published(owner)] == [(SHARD, owner.name)]
    assert all(owner.machine.current(send) for send in sends)  # neither timed out yet

    # Another owner's tick, however recent, says nothing about this owner's reading.
    owner.inputs = [{**published(owner)[0], "owner": "another:1", "sent_at": published(owner)[0]["sent_at"] + 60}]
    owner._apply_inputs()
    owner._fire_timers()
    assert all(owner.machine.current(send) for send in sends)

    owner.inputs = [published(owner)[0]]  # its mark, read back from the shard's queue
    owner._apply_inputs()
    owner._fire_timers()

    assert not any(owner.machine.current(send) for send in sends)
    assert {changes["status"] for changes in owner.machine.record.messages.values()} == {"timed_out"}
    assert len(published(owner)) == 1


def test_one_mark_at_a_time_per_shard_the_next_once_it_is_read_back(owner: Owner) -> None:
    served = in_flight(owner, 1)  # due 1 s ago
    owner._fire_timers()
    (mark,) = published(owner)
    mark["sent_at"] -= 0.5  # as if sent half a second ago
    owner.marked[SHARD] = mark["sent_at"]
    later = in_flight(owner, 2, sent_ago=1.2)  # due 0.2 s ago: after the mark was sent

    owner._fire_timers()
    assert len(published(owner)) == 1  # the mark on its way serves, or asks for the next

    owner.inputs = [mark]
    owner._apply_inputs()
    owner._fire_timers()

    assert owner.machine.current(served) is None
    assert owner.machine.current(later)
    assert len(published(owner)) == 2


def test_a_mark_not_read_back_is_published_again(owner: Owner, monkeypatch: pytest.MonkeyPatch) -> None:
    send = in_flight(owner, 1)
    owner._fire_timers()
    later = owner_module.time.time() + MARK_AGAIN_S + 1
    monkeypatch.setattr(owner_module.time, "time", lambda: later)

    owner._fire_timers()

    assert [tick["sent_at"] for tick in published(owner)][1:] == [later]
    assert owner.machine.current(send)


def test_a_timeout_whose_message_already_ended_is_dropped_without_a_mark(owner: Owner) -> None:
    send = in_flight(owner, 1)
    assert owner.machine.acked(1, "k1", "chm", timezone.now())

    owner._fire_timers()

    assert published(owner) == []
    assert not any(owner.waiting.values())
    assert owner.machine.current(send) is None
