"""Integration fixtures: the real RabbitMQ, Redis and database started by platform/test,
and Carillon's own processes started here."""

import os
from collections.abc import Iterator

import pytest
import requests

from sandbox.client import SandboxClient
from tests.processes import ManagedProcess, free_port, python


@pytest.fixture(scope="session", autouse=True)
def _require_services() -> None:
    if not os.environ.get("CARILLON_TEST_SERVICES"):
        pytest.fail(
            "integration tests need the services platform/test starts: run ./platform/test "
            "(it passes its arguments to pytest, e.g. ./platform/test tests/integration -k sandbox)",
            pytrace=False,
        )


def _answers(url: str) -> bool:
    try:
        # The first request to a fresh daphne loads Django's URLconf: allow it time.
        return requests.get(url, timeout=10).status_code == 200
    except requests.RequestException:
        return False


@pytest.fixture(scope="session")
def sandbox_process(django_db_setup: None) -> Iterator[SandboxClient]:
    http_port, smtp_port = free_port(), free_port()
    process = ManagedProcess(
        "sandbox",
        python("-m", "sandbox", "--http-port", str(http_port), "--smtp-port", str(smtp_port)),
    )
    client = SandboxClient(f"http://127.0.0.1:{http_port}", smtp_port=smtp_port)
    process.wait_until(lambda: _answers(f"{client.url}/healthz"), "sandbox /healthz")
    yield client
    process.stop()


@pytest.fixture
def sandbox(sandbox_process: SandboxClient) -> SandboxClient:
    """The provider sandbox, emptied and healthy for each test."""
    sandbox_process.reset()
    return sandbox_process


def _celery_worker(
    app: str, name: str, queues: str, *, pool: str = "prefork", env: dict[str, str] | None = None
) -> ManagedProcess:
    process = ManagedProcess(
        name,
        python(
            "-m", "celery", "-A", app, "worker", "--loglevel", "INFO", "--hostname", f"{name}@%h",
            "--queues", queues, "--concurrency", "1", "--without-mingle", "--without-gossip",
            "--pool", pool,
        ),
        env=env,
    )
    process.wait_for_log(" ready.", timeout=90)
    return process


@pytest.fixture(scope="session")
def critical_worker(django_db_setup: None) -> Iterator[ManagedProcess]:
    """A worker of the critical app, consuming RabbitMQ."""
    process = _celery_worker("config.celery", "test-critical", "carillon.default,carillon.rooms")
    yield process
    process.stop()


@pytest.fixture(scope="session")
def background_worker(django_db_setup: None) -> Iterator[ManagedProcess]:
    """A worker of the background app, consuming Redis."""
    process = _celery_worker("config.background", "test-background", "background")
    yield process
    process.stop()


@pytest.fixture(scope="session")
def daphne_url(django_db_setup: None) -> Iterator[str]:
    """A real daphne serving config.asgi, on a free port."""
    port = free_port()
    process = ManagedProcess(
        "daphne", python("-m", "daphne", "-b", "127.0.0.1", "-p", str(port), "config.asgi:application")
    )
    url = f"http://127.0.0.1:{port}"
    process.wait_until(lambda: _answers(f"{url}/healthz"), "daphne /healthz")
    yield url
    process.stop()
