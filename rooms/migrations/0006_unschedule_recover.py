"""The recovery sweep of the task-per-send sequencer is gone: its rooms' owners read the
record back when they take a shard, and check every few seconds for messages whose
input was never published. Remove its schedule from the background app's beat."""

from django.apps.registry import Apps
from django.db import migrations
from django.db.backends.base.schema import BaseDatabaseSchemaEditor


def unschedule(apps: Apps, schema_editor: BaseDatabaseSchemaEditor) -> None:
    apps.get_model("django_celery_beat", "PeriodicTask").objects.filter(task="background.rooms_recover").delete()


class Migration(migrations.Migration):
    dependencies = [
        ("rooms", "0005_shards"),
        ("django_celery_beat", "0019_alter_periodictasks_options"),
    ]

    operations = [migrations.RunPython(unschedule, migrations.RunPython.noop)]
