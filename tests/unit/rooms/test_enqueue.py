"""Enqueueing several messages together: numbered after what each room holds, all or
nothing, one wait for RabbitMQ for all (the inputs are captured: the owner is tested on
its own)."""

import pytest

from rooms.exceptions import InvalidRequestError, RoomNotFoundError
from rooms.models import Room, RoomMessage, RoomSequence
from rooms.services import enqueue
from rooms.services.enqueue import room_create, room_message_enqueue, room_messages_enqueue
from tests.unit.rooms.conftest import Inputs

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def other(room: Room) -> Room:
    return room_create(provider_name=room.provider.name, recipient="+15550002")


def numbered(room: Room) -> list[tuple[int, str]]:
    return list(RoomMessage.objects.filter(room=room).order_by("sequence").values_list("sequence", "body"))


def test_messages_enqueued_together_follow_what_each_room_holds_and_reach_the_owners_in_one_publish(
    room: Room, other: Room, sent: Inputs
) -> None:
    room_message_enqueue(room_id=room.pk, body="a")

    created = room_messages_enqueue(messages=[(room.pk, "b"), (other.pk, "x"), (room.pk, "c")])

    assert [(m.room_id, m.sequence, m.body) for m in created] == [(room.pk, 2, "b"), (other.pk, 1, "x"),
                                                                   (room.pk, 3, "c")]
    assert all(m.pk for m in created)
    assert numbered(room) == [(1, "a"), (2, "b"), (3, "c")]
    assert numbered(other) == [(1, "x")]
    handed = sent.of_kind("enqueued")[1:]
    assert [(i["room"], i["sequence"], i["body"], i["message"], i["shard"], i["recipient"]) for i in handed] == [
        (m.room_id, m.sequence, m.body, m.pk, Room.objects.get(pk=m.room_id).shard,
         Room.objects.get(pk=m.room_id).recipient) for m in created]
    assert [(shard, i["shard"]) for shard, i in sent.calls if shard != i["shard"]] == []
    assert sent.publishes == 2  # one for the single message, one for the three


def test_messages_enqueued_together_naming_a_room_that_does_not_exist_write_nothing(
    room: Room, other: Room, sent: Inputs
) -> None:
    missing = other.pk + 1000
    with pytest.raises(RoomNotFoundError) as raised:
        room_messages_enqueue(messages=[(room.pk, "a"), (missing, "b"), (other.pk, "c")])

    assert raised.value.detail == {"room_id": missing}
    with pytest.raises(RoomNotFoundError) as raised:
        room_messages_enqueue(messages=[(missing + 1, "b"), (room.pk, "a"), (missing, "b")])

    assert raised.value.detail == {"room_ids": [missing, missing + 1]}
    assert str(missing + 1) in str(raised.value)
    assert not RoomMessage.objects.exists()
    assert not RoomSequence.objects.exists()  # the existing rooms' counters rolled back too
    assert sent.calls == []


def test_too_many_messages_together_are_refused_whole(room: Room, sent: Inputs) -> None:
    with pytest.raises(InvalidRequestError):
        room_messages_enqueue(messages=[(room.pk, str(n)) for n in range(enqueue.ENQUEUE_MAX + 1)])
    assert not RoomMessage.objects.exists()
    assert room_messages_enqueue(messages=[]) == []
    assert sent.calls == []
