"""The served OpenAPI schema, as clients and the suite's fuzzer first fetch it."""

from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from tests.integration.conftest import start_daphne

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True), pytest.mark.database_agnostic]


def test_a_fresh_process_serves_the_schema_to_clients_asking_at_once() -> None:
    # drf-spectacular loads its extensions on the first generation, not thread-safely:
    # concurrent first requests to a new process must still all get the schema.
    process, url = start_daphne("daphne-schema")
    try:
        with ThreadPoolExecutor(8) as pool:
            statuses = list(pool.map(lambda _: requests.get(f"{url}/api/schema/", timeout=60).status_code, range(8)))
    finally:
        process.stop()

    assert statuses == [200] * 8
