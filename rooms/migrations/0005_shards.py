import zlib

from django.db import migrations, models

SHARDS = 16


def shards_fill(apps, schema_editor):
    """Give existing rooms their shard and create one ownership row per shard."""
    room_model = apps.get_model("rooms", "Room")
    shard_model = apps.get_model("rooms", "RoomShard")
    for room in room_model.objects.only("pk", "provider_id", "recipient").iterator():
        shard = zlib.crc32(f"{room.provider_id}:{room.recipient}".encode()) % SHARDS
        room_model.objects.filter(pk=room.pk).update(shard=shard)
    shard_model.objects.bulk_create([shard_model(shard=n) for n in range(SHARDS)], ignore_conflicts=True)


class Migration(migrations.Migration):

    dependencies = [
        ("rooms", "0004_owner_and_request_keys"),
    ]

    operations = [
        migrations.AddField(
            model_name="room",
            name="shard",
            field=models.PositiveSmallIntegerField(db_index=True, default=0, editable=False),
        ),
        migrations.CreateModel(
            name="RoomShard",
            fields=[
                ("shard", models.PositiveSmallIntegerField(primary_key=True, serialize=False)),
                ("epoch", models.PositiveBigIntegerField(default=0)),
                ("owner", models.CharField(blank=True, help_text="host:pid of the owner process", max_length=255)),
                ("taken_at", models.DateTimeField(blank=True, null=True)),
                ("flushed_at", models.DateTimeField(blank=True, null=True)),
            ],
        ),
        migrations.RunPython(shards_fill, migrations.RunPython.noop),
    ]
