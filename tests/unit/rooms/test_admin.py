"""Operators skip or retry a stuck message in the admin; other staff only watch."""

from typing import Any

import pytest
from django.contrib.auth.models import Permission
from django.test import Client

from rooms.models import Room, RoomMessage, RoomShard
from rooms.services.enqueue import room_message_enqueue
from tests.unit.rooms.conftest import Inputs, owner_puts_in_flight

pytestmark = pytest.mark.django_db(transaction=True)

Status = RoomMessage.Status


def staff_client(django_user_model: Any, *, can_operate: bool) -> Client:
    user = django_user_model.objects.create_user("operator" if can_operate else "viewer", is_staff=True)
    user.user_permissions.add(Permission.objects.get(codename="view_room"))
    if can_operate:
        user.user_permissions.add(Permission.objects.get(codename="operate_room"))
    client = Client()
    client.force_login(user)
    return client


def stuck_room(room: Room) -> tuple[RoomMessage, RoomMessage]:
    first, second = (room_message_enqueue(room_id=room.pk, body=b) for b in ("a", "b"))
    owner_puts_in_flight(first)
    return first, second


def test_staff_without_the_permission_can_watch_but_not_skip(
    room: Room, sent: Inputs, django_user_model: Any
) -> None:
    stuck_room(room)
    viewer = staff_client(django_user_model, can_operate=False)

    page = viewer.get("/admin/rooms/room/")
    viewer.post("/admin/rooms/room/", {"action": "skip_in_flight", "_selected_action": [room.pk]})

    assert page.status_code == 200 and b"skip_in_flight" not in page.content
    assert sent.of_kind("skip") == []


def test_an_operator_asks_the_owner_to_skip_the_stuck_message(
    room: Room, sent: Inputs, django_user_model: Any
) -> None:
    first, _second = stuck_room(room)
    operator = staff_client(django_user_model, can_operate=True)

    page = operator.get("/admin/rooms/room/")
    response = operator.post("/admin/rooms/room/", {"action": "skip_in_flight", "_selected_action": [room.pk]},
                             follow=True)

    assert b"skip_in_flight" in page.content
    assert [str(m) for m in response.context["messages"]] == [
        "asked the rooms' owner to skip 1 message(s); refresh to see them move"]
    assert sent.of_kind("skip") == [{"kind": "skip", "shard": room.shard, "room": room.pk, "message": first.pk}]


def test_an_operator_asks_the_owner_to_retry_and_a_finished_message_is_not_asked_for(
    room: Room, sent: Inputs, django_user_model: Any
) -> None:
    first, second = stuck_room(room)
    RoomMessage.objects.filter(pk=second.pk).update(status=Status.ACKED)
    operator = staff_client(django_user_model, can_operate=True)

    operator.post("/admin/rooms/room/", {"action": "retry_in_flight", "_selected_action": [room.pk]})
    operator.post("/admin/rooms/roommessage/", {"action": "skip", "_selected_action": [second.pk]})

    assert sent.of_kind("retry") == [{"kind": "retry", "shard": room.shard, "room": room.pk, "message": first.pk}]
    assert sent.of_kind("skip") == []


def test_staff_see_which_owner_holds_each_shard_and_cannot_change_it(django_user_model: Any) -> None:
    RoomShard.objects.update_or_create(shard=3, defaults={"epoch": 7, "owner": "host-a:4242"})
    admin_user = django_user_model.objects.create_superuser("root", password="x-not-used-x")
    client = Client()
    client.force_login(admin_user)

    page = client.get("/admin/rooms/roomshard/")
    change = client.post("/admin/rooms/roomshard/3/change/", {"epoch": 1, "owner": "me"})

    assert page.status_code == 200 and b"host-a:4242" in page.content
    assert change.status_code in (200, 302, 403)  # a read-only form: shown again, or refused
    shard = RoomShard.objects.get(shard=3)
    assert (shard.epoch, shard.owner) == (7, "host-a:4242")
