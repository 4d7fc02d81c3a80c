"""Fewer indexes on a room's messages: each status change rewrote the message's entry
in all eight. The room's own index is covered by the unique (room, sequence) index;
status's two (one for LIKE, which nothing runs) and room/status/sequence by one index
on status, room and sequence."""

import django.db.models.deletion
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("rooms", "0007_sequence_apart"),
    ]

    operations = [
        migrations.RemoveIndex(
            model_name="roommessage",
            name="rooms_roomm_room_id_1ca8a9_idx",
        ),
        migrations.AlterField(
            model_name="roommessage",
            name="room",
            field=models.ForeignKey(
                db_index=False,
                on_delete=django.db.models.deletion.CASCADE,
                related_name="messages",
                to="rooms.room",
            ),
        ),
        migrations.AlterField(
            model_name="roommessage",
            name="status",
            field=models.CharField(
                choices=[
                    ("queued", "Queued"),
                    ("in_flight", "In Flight"),
                    ("acked", "Acked"),
                    ("timed_out", "timed out (counted as sent)"),
                    ("skipped", "skipped by an operator"),
                    ("failed", "refused by the provider"),
                ],
                default="queued",
                max_length=16,
            ),
        ),
        migrations.AddIndex(
            model_name="roommessage",
            index=models.Index(fields=["status", "room", "sequence"], name="room_message_status"),
        ),
    ]
