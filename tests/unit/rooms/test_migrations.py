"""The migration that moved a room's message counter to its own row carries existing
counts over: a room that had messages goes on numbering after them (a counter restarted
at 1 would collide with the room's unique sequences)."""

import pytest
from django.db import connection
from django.db.migrations.executor import MigrationExecutor

pytestmark = pytest.mark.django_db(transaction=True)

BEFORE, AFTER = [("rooms", "0006_unschedule_recover")], [("rooms", "0007_sequence_apart")]


def test_existing_rooms_keep_their_last_sequence_when_the_counter_moves_apart() -> None:
    executor = MigrationExecutor(connection)
    executor.migrate(BEFORE)
    old = executor.loader.project_state(BEFORE).apps
    provider = old.get_model("rooms", "ChatProvider").objects.create(name="migrated")
    rooms = old.get_model("rooms", "Room")
    used = rooms.objects.create(provider=provider, recipient="used", last_sequence=5)
    unused = rooms.objects.create(provider=provider, recipient="unused")

    executor = MigrationExecutor(connection)
    executor.loader.build_graph()
    executor.migrate(AFTER)
    new = executor.loader.project_state(AFTER).apps
    counters = dict(new.get_model("rooms", "RoomSequence").objects.values_list("room_id", "last_sequence"))

    assert counters == {used.pk: 5}  # a room without messages gets its counter at its first
    assert unused.pk not in counters
