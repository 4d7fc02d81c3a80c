"""After a transactional test the database is empty but for what migrations wrote; the
migrations describe the models."""

from io import StringIO

import pytest
from django.contrib.auth.models import Permission
from django.contrib.contenttypes.models import ContentType
from django.core.management import call_command
from django.db import connection

from notifications.models import Delivery
from tests.database import KEPT_TABLES, database_empty
from tests.factories import EventFactory, recipient_user

pytestmark = pytest.mark.django_db(transaction=True)


def _rows(table: str) -> int:
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT COUNT(*) FROM {connection.ops.quote_name(table)}")  # noqa: S608
        return int(cursor.fetchone()[0])


def test_every_row_a_test_wrote_is_gone_and_the_migrations_rows_stay() -> None:
    user = recipient_user("emptied")
    user.user_permissions.add(Permission.objects.get(codename="publish_event"))
    event = EventFactory.create()
    Delivery.objects.create(event=event, subscriber="s", recipient=f"user:{user.pk}", channel="email", user_id=user.pk)
    permissions, content_types = Permission.objects.count(), ContentType.objects.count()

    database_empty("default")

    emptied = set(connection.introspection.django_table_names(only_existing=True)) - KEPT_TABLES
    left = {table: rows for table in sorted(emptied) if (rows := _rows(table))}
    assert left == {}
    assert (Permission.objects.count(), ContentType.objects.count()) == (permissions, content_types)


@pytest.mark.django_db
def test_the_migrations_describe_the_models_as_they_are() -> None:
    # Tests build their database from the migrations: a model changed without one (an
    # index, a constraint) would pass every test and never reach a deployed database.
    changes = StringIO()
    try:
        call_command("makemigrations", "--check", "--dry-run", stdout=changes)
    except SystemExit:
        pytest.fail(f"models changed without a migration (manage.py makemigrations):\n{changes.getvalue()}")
