"""A room's message counter moves to a row of its own (`RoomSequence`): an enqueue holds
the counter's lock until it commits, and on the room's row, which the room's owner
writes at every send, that lock made the owner's group commit wait for enqueues in
progress. The counts of existing rooms are carried over."""

import django.db.models.deletion
from django.apps.registry import Apps
from django.db import migrations, models
from django.db.backends.base.schema import BaseDatabaseSchemaEditor

BATCH = 1000


def counters_apart(apps: Apps, schema_editor: BaseDatabaseSchemaEditor) -> None:
    rooms, counters = apps.get_model("rooms", "Room"), apps.get_model("rooms", "RoomSequence")
    # The historical model still has the field; the stubs read the current one.
    counts = rooms.objects.filter(last_sequence__gt=0).values_list(  # type: ignore[misc]
        "pk", "last_sequence").iterator(chunk_size=BATCH)
    counters.objects.bulk_create(
        (counters(room_id=room_id, last_sequence=last) for room_id, last in counts), batch_size=BATCH
    )


def counters_back(apps: Apps, schema_editor: BaseDatabaseSchemaEditor) -> None:
    rooms, counters = apps.get_model("rooms", "Room"), apps.get_model("rooms", "RoomSequence")
    for room_id, last in counters.objects.values_list("room_id", "last_sequence").iterator(chunk_size=BATCH):
        rooms.objects.filter(pk=room_id).update(last_sequence=last)  # type: ignore[misc]


class Migration(migrations.Migration):
    dependencies = [
        ("rooms", "0006_unschedule_recover"),
    ]

    operations = [
        migrations.CreateModel(
            name="RoomSequence",
            fields=[
                ("room", models.OneToOneField(on_delete=django.db.models.deletion.CASCADE, primary_key=True,
                                              related_name="sequence", serialize=False, to="rooms.room")),
                ("last_sequence", models.PositiveBigIntegerField(default=0)),
            ],
        ),
        migrations.RunPython(counters_apart, counters_back),
        migrations.RemoveField(
            model_name="room",
            name="last_sequence",
        ),
    ]
