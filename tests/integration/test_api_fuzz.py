"""The served OpenAPI schema, fuzzed against a real daphne as staff, a user and nobody.

Schemathesis generates requests from /api/schema/ (valid and invalid ones), sends them to
the test daphne and fails on any 5xx or any answer the schema does not describe: a new
endpoint, or a change to one, is held to the error contract (docs/api.md) without a test
written for it. The run is derandomised (a fixed seed) and bounded, so that it fails the
same way twice and stays well under two minutes.
"""

import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from rest_framework.authtoken.models import Token

from config.celery import app as critical_app
from notifications.queues import task_queues, topology_declare
from rooms.shards import shard_queues

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

CHECKS = ",".join(
    [
        "not_a_server_error",
        "status_code_conformance",
        "content_type_conformance",
        "response_schema_conformance",
        "unsupported_method",
    ]
)
# Examples per operation and phase: enough to reach every documented answer of each
# operation, few enough that the identities stay within about a minute and a half.
MAX_EXAMPLES = 6


def _token(username: str, **flags: Any) -> str:
    user = get_user_model().objects.create_user(username, **flags)
    if flags:
        user.user_permissions.add(*Permission.objects.filter(codename__in=["publish_event", "replay_failedjob"]))
    return Token.objects.create(user=user).key


@pytest.fixture
def purge_task_queues() -> Iterator[None]:
    """Events and room messages the fuzzer published must not reach a later test's workers."""
    yield
    with critical_app.connection_for_write() as connection:
        topology_declare(connection)
        for queue in (*task_queues(), *shard_queues()):
            queue(connection.default_channel).declare()
            queue(connection.default_channel).purge()


def _schemathesis(daphne_url: str, headers: list[str], workdir: Path) -> "subprocess.Popen[str]":
    return subprocess.Popen(
        [
            sys.executable, "-m", "schemathesis.cli", "run", f"{daphne_url}/api/schema/",
            "--url", daphne_url,
            "--checks", CHECKS,
            "--max-examples", str(MAX_EXAMPLES),
            "--seed", "1",
            "--generation-deterministic",
            "--suppress-health-check", "all",
            "--phases", "examples,coverage,fuzzing",
            "--workers", "1",
            "--request-timeout", "10",
            "--no-color",
            *headers,
        ],
        cwd=workdir,  # where it keeps its state (.schemathesis/), not the checkout
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


IDENTITIES: dict[str, Callable[[], list[str]]] = {
    "staff": lambda: ["--header", f"Authorization: Token {_token('fuzz-staff', is_staff=True)}"],
    "user": lambda: ["--header", f"Authorization: Token {_token('fuzz-user')}"],
    "anonymous": lambda: [],
}


@pytest.mark.usefixtures("purge_task_queues")
@pytest.mark.parametrize(
    "identities",
    [
        pytest.param(("staff", "user"), id="staff-and-user"),
        # Without credentials every request is refused before it reaches the database
        # (webhooks by their signature): once, not on each database.
        pytest.param(("anonymous",), id="anonymous", marks=pytest.mark.database_agnostic),
    ],
)
def test_every_answer_of_the_api_is_documented_and_none_is_a_server_error(
    daphne_url: str, tmp_path: Path, identities: tuple[str, ...]
) -> None:
    # The runs at once: each spends most of its time generating, not waiting on daphne.
    runs = {identity: _schemathesis(daphne_url, IDENTITIES[identity](), tmp_path) for identity in identities}
    outputs = {identity: run.communicate(timeout=240)[0] for identity, run in runs.items()}

    failed = {identity: outputs[identity][-15_000:] for identity, run in runs.items() if run.returncode != 0}
    assert not failed, "\n\n".join(f"===== as {identity} =====\n{output}" for identity, output in failed.items())
