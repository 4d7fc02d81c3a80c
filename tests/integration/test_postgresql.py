"""PostgreSQL as Carillon configures it (the integration pass on PostgreSQL)."""

import pytest
from django.db import connection

from rooms.models import ChatProvider

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(connection.vendor != "postgresql", reason="PostgreSQL's own configuration"),
]


def test_a_statement_a_connection_repeats_is_prepared_once_and_run_from_its_plan(db: None) -> None:
    for name in ["a", "b", "c", "d", "e", "f"]:  # five runs, then prepared
        assert not ChatProvider.objects.filter(name=name).exists()

    with connection.cursor() as cursor:
        cursor.execute("SELECT statement, generic_plans + custom_plans FROM pg_prepared_statements")
        prepared = cursor.fetchall()

    runs = [runs for statement, runs in prepared if "rooms_chatprovider" in statement]
    assert len(runs) == 1 and runs[0] >= 1, prepared
