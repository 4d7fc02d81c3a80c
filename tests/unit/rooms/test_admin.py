"""Operators skip or retry a stuck message in the admin; other staff only watch."""

from typing import Any

import pytest
from django.contrib.auth.models import Permission
from django.test import Client

from rooms.models import Room, RoomMessage
from rooms.services.enqueue import room_message_enqueue
from tests.unit.rooms.conftest import SentTasks

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


def test_staff_without_the_permission_can_watch_but_not_skip(
    room: Room, sent: SentTasks, django_user_model: Any
) -> None:
    first, _second = (room_message_enqueue(room_id=room.pk, body=b) for b in ("a", "b"))
    viewer = staff_client(django_user_model, can_operate=False)

    page = viewer.get("/admin/rooms/room/")
    viewer.post("/admin/rooms/room/", {"action": "skip_in_flight", "_selected_action": [room.pk]})

    assert page.status_code == 200 and b"skip_in_flight" not in page.content
    assert Room.objects.get(pk=room.pk).in_flight_id == first.pk
    assert RoomMessage.objects.get(pk=first.pk).status == Status.IN_FLIGHT


def test_an_operator_skips_the_stuck_message_and_the_next_goes_out(
    room: Room, sent: SentTasks, django_user_model: Any
) -> None:
    first, second = (room_message_enqueue(room_id=room.pk, body=b) for b in ("a", "b"))
    operator = staff_client(django_user_model, can_operate=True)

    page = operator.get("/admin/rooms/room/")
    response = operator.post("/admin/rooms/room/", {"action": "skip_in_flight", "_selected_action": [room.pk]})

    assert b"skip_in_flight" in page.content
    assert response.status_code == 302
    assert RoomMessage.objects.get(pk=first.pk).status == Status.SKIPPED
    assert Room.objects.get(pk=room.pk).in_flight_id == second.pk
    assert sent.calls == [(first.pk, 1), (second.pk, 1)]


def test_an_operator_retries_the_in_flight_message_at_the_next_attempt(
    room: Room, sent: SentTasks, django_user_model: Any
) -> None:
    first = room_message_enqueue(room_id=room.pk, body="a")
    operator = staff_client(django_user_model, can_operate=True)

    operator.post("/admin/rooms/room/", {"action": "retry_in_flight", "_selected_action": [room.pk]})

    assert (Room.objects.get(pk=room.pk).attempt, sent.calls) == (2, [(first.pk, 1), (first.pk, 2)])
