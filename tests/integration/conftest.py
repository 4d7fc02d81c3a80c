"""Integration fixtures: the real RabbitMQ, Redis and database started by platform/test,
and Carillon's own processes started here."""

import os
from collections.abc import Callable, Iterator

import pytest
import requests
from django.test import override_settings

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
    app: str, name: str, queues: str, env: dict[str, str] | None = None, concurrency: int = 1
) -> ManagedProcess:
    process = ManagedProcess(
        name,
        python(
            "-m",
            "celery",
            "-A",
            app,
            "worker",
            "--loglevel",
            "INFO",
            "--hostname",
            f"{name}@%h",
            "--queues",
            queues,
            "--concurrency",
            str(concurrency),
            "--without-mingle",
            "--without-gossip",
        ),
        env=env,
    )
    process.wait_for_log(" ready.", timeout=90)
    return process


CHANNEL_QUEUES = "carillon.email,carillon.sms,carillon.analytics,carillon.inapp"


@pytest.fixture(scope="session")
def critical_worker(django_db_setup: None) -> Iterator[ManagedProcess]:
    """A worker of the critical app, consuming RabbitMQ."""
    process = _celery_worker("config.celery", "test-critical", "carillon.default")
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
    # Webhook signatures are checked against the public URL: here, daphne's own.
    process, url = start_daphne(
        "daphne", env={"CARILLON_PUBLIC_URL": f"http://127.0.0.1:{port}"}, port=port
    )
    yield url
    process.stop()


@pytest.fixture
def pipeline_env(sandbox: SandboxClient, daphne_url: str) -> dict[str, str]:
    """Environment of Carillon processes wired to the sandbox and the test daphne."""
    return {
        "CARILLON_PUBLIC_URL": daphne_url,
        "EMAIL_URL": f"smtp://127.0.0.1:{sandbox.smtp_port}",
        "TWILIO_API_BASE_URL": sandbox.url,
        "MIXPANEL_API_BASE_URL": sandbox.url,
        "CARILLON_RETRY_BACKOFF_SECONDS": "1",
    }


@pytest.fixture
def start_pipeline_worker(pipeline_env: dict[str, str]) -> Iterator[Callable[..., ManagedProcess]]:
    """Start critical workers on every channel queue; each is stopped after the test."""
    started: list[ManagedProcess] = []

    def start(name: str = "pipeline-worker", **env: str) -> ManagedProcess:
        process = _celery_worker(
            "config.celery",
            f"{name}-{len(started)}",
            CHANNEL_QUEUES,
            env={**pipeline_env, **env},
            concurrency=2,
        )
        started.append(process)
        return process

    yield start
    for process in started:
        process.stop()


@pytest.fixture
def pipeline_settings(sandbox: SandboxClient, daphne_url: str) -> Iterator[None]:
    """The same wiring for the test process itself (it publishes and runs the relay)."""
    with override_settings(
        CARILLON_PUBLIC_URL=daphne_url,
        EMAIL_HOST="127.0.0.1",
        EMAIL_PORT=sandbox.smtp_port,
        TWILIO_API_BASE_URL=sandbox.url,
        MIXPANEL_API_BASE_URL=sandbox.url,
    ):
        yield


def start_daphne(
    name: str, env: dict[str, str] | None = None, port: int | None = None
) -> tuple[ManagedProcess, str]:
    """A real daphne serving config.asgi (on a free port unless given), answering /healthz."""
    port = port or free_port()
    process = ManagedProcess(
        name,
        python("-m", "daphne", "-b", "127.0.0.1", "-p", str(port), "config.asgi:application"),
        env=env,
    )
    url = f"http://127.0.0.1:{port}"
    process.wait_until(lambda: _answers(f"{url}/healthz"), f"{name} /healthz")
    return process, url


@pytest.fixture(scope="session")
def second_daphne_url(django_db_setup: None) -> Iterator[str]:
    """Another daphne process beside `daphne_url`: fan-out must reach both."""
    process, url = start_daphne("daphne-2")
    yield url
    process.stop()
