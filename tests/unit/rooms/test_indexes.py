"""The owners read messages by status (the queued ones on their periodic check, the
unfinished ones when they take a shard) and operators filter by it: those reads find
their rows through an index, on SQLite too, which uses a partial index only for a query
that repeats its condition word for word."""

import pytest
from django.db import connection

from rooms.models import RoomMessage

pytestmark = pytest.mark.django_db

Status = RoomMessage.Status


@pytest.mark.parametrize("statuses", [[Status.QUEUED], [Status.QUEUED, Status.IN_FLIGHT], [Status.FAILED]])
def test_messages_are_found_by_status_through_an_index(statuses: list[str]) -> None:
    if connection.vendor != "sqlite":  # PostgreSQL's planner picks by its statistics
        pytest.skip("a plan without statistics is only deterministic on SQLite")
    plan = RoomMessage.objects.filter(status__in=statuses).explain()
    assert "USING INDEX room_message_status" in plan, plan
