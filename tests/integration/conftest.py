"""Integration fixtures: the real RabbitMQ, Redis and database started by platform/test,
and Carillon's own processes started here."""

import asyncio
import os
import socket
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import requests
from amqp.exceptions import NotFound
from asgiref.sync import sync_to_async
from django.db import connections
from django.test import override_settings
from kombu.transport.native_delayed_delivery import MAX_LEVEL, level_name

from sandbox.client import SandboxClient
from tests.processes import ManagedProcess, free_port, python, wait_for


@pytest.fixture(scope="session", autouse=True)
def _require_services() -> None:
    if not os.environ.get("CARILLON_TEST_SERVICES"):
        pytest.fail(
            "integration tests need the services platform/test starts: run ./platform/test "
            "(it passes its arguments to pytest, e.g. ./platform/test tests/integration -k sandbox)",
            pytrace=False,
        )


@pytest.fixture(scope="session", autouse=True)
def _async_orm_connection_closed(django_db_setup: None) -> Iterator[None]:
    """A test that runs its own event loop and reads the database from it (a consumer run
    in-process, Django's async ORM) does so on asgiref's one database thread, whose
    connection nothing else closes: close it before the test database is dropped, which
    PostgreSQL refuses while any session is open on it."""
    yield
    asyncio.run(sync_to_async(connections.close_all)())


def _answers(url: str) -> bool:
    try:
        # The first request to a fresh daphne loads Django's URLconf: allow it time.
        return requests.get(url, timeout=10).status_code == 200
    except requests.RequestException:
        return False


@pytest.fixture(autouse=True)
def _fast_path_unpaused(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test starts with this process's fast path publishing: a broker error in an
    earlier test pauses it for a few seconds, which would leave this test's events to a
    relay it may not run."""
    from notifications import relay

    monkeypatch.setattr(relay, "_fast_path_paused_until", 0.0)


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


class CeleryWorker(ManagedProcess):
    """A Celery worker process, with the node name it answers remote control under."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str] | None, hostname: str) -> None:
        super().__init__(name, argv, env=env)
        self.hostname = hostname

    def wait_ready(self) -> None:
        self.wait_for_log(" ready.", timeout=90)


def celery_worker_start(
    app: str, name: str, queues: str, env: dict[str, str] | None = None, concurrency: int = 1, *, wait: bool = True
) -> CeleryWorker:
    """A Celery worker consuming `queues`, ready (unless `wait` is false: then call its
    `wait_ready`, after starting others beside it: startups overlap)."""
    process = CeleryWorker(
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
        env,
        f"{name}@{socket.gethostname()}",  # what celery makes of "%h"
    )
    if wait:
        process.wait_ready()
    return process


CHANNEL_QUEUES = "carillon.email,carillon.sms,carillon.analytics,carillon.inapp"
# Broadcasts ride these: a test starts a worker on them when it needs one.
BULK_QUEUES = "carillon.email.bulk,carillon.sms.bulk,carillon.analytics.bulk,carillon.inapp.bulk"
EVERY_CHANNEL_QUEUE = f"{CHANNEL_QUEUES},{BULK_QUEUES}"


@pytest.fixture(scope="session")
def _app_workers(django_db_setup: None) -> Iterator[tuple[CeleryWorker, CeleryWorker]]:
    """A worker of each app, started at once (their startups overlap)."""
    workers = (
        celery_worker_start("config.celery", "test-critical", "carillon.default", wait=False),
        celery_worker_start("config.background", "test-background", "background", wait=False),
    )
    try:
        for worker in workers:
            worker.wait_ready()
        yield workers
    finally:
        for worker in workers:
            worker.kill()  # the session is over: a warm shutdown only costs time


@pytest.fixture(scope="session")
def critical_worker(_app_workers: tuple[CeleryWorker, CeleryWorker]) -> ManagedProcess:
    """A worker of the critical app, consuming RabbitMQ."""
    return _app_workers[0]


@pytest.fixture(scope="session")
def background_worker(_app_workers: tuple[CeleryWorker, CeleryWorker]) -> ManagedProcess:
    """A worker of the background app, consuming Redis."""
    return _app_workers[1]


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


@pytest.fixture(scope="session")
def session_pipeline_env(sandbox_process: SandboxClient, daphne_url: str) -> dict[str, str]:
    """Environment of Carillon processes wired to the sandbox and the test daphne: both
    live for the whole session, so this is known once."""
    return {
        "CARILLON_PUBLIC_URL": daphne_url,
        "EMAIL_URL": f"smtp://127.0.0.1:{sandbox_process.smtp_port}",
        "TWILIO_API_BASE_URL": sandbox_process.url,
        "MIXPANEL_API_BASE_URL": sandbox_process.url,
        "CARILLON_RETRY_BACKOFF_SECONDS": "1",
    }


@pytest.fixture
def pipeline_env(sandbox: SandboxClient, session_pipeline_env: dict[str, str]) -> dict[str, str]:
    """The same environment, with the sandbox emptied for this test."""
    return dict(session_pipeline_env)


# Celery's native delayed delivery: a message published with a countdown (a retry, a
# put-off analytics delivery waiting for its batch) waits inside RabbitMQ in these queues,
# where neither the channel queues nor the worker count it.
DELAYED_QUEUES = [level_name(level) for level in range(MAX_LEVEL + 1)]


def _queue_counts(names: Iterable[str]) -> dict[str, tuple[int, int]]:
    """Messages ready in each queue now, and its consumers (a passive declare counts them
    live, where the management API's numbers are up to seconds old); (0, 0) for a queue
    not declared yet (delayed queues exist once a worker declared them)."""
    from config.celery import app as critical_app
    from notifications.queues import topology_declare

    with critical_app.connection_for_write() as connection:
        topology_declare(connection)  # a fresh broker has none until a worker starts
        channel = connection.channel()
        counts = {}
        for name in names:
            try:
                declared = channel.queue_declare(queue=name, passive=True)
            except NotFound:
                counts[name] = (0, 0)
                channel = connection.channel()  # RabbitMQ closed the one that asked
            else:
                counts[name] = (declared.message_count, declared.consumer_count)
        channel.close()
        return counts


def _channel_queue_counts() -> dict[str, tuple[int, int]]:
    return _queue_counts(EVERY_CHANNEL_QUEUE.split(","))


def _channel_queues_purge() -> None:
    """Empty the channel queues and the delayed ones: nothing of an earlier test reaches
    the next one's worker, not even a retry that was waiting out its countdown."""
    from config.celery import app as critical_app
    from notifications.queues import topology_declare

    with critical_app.connection_for_write() as connection:
        topology_declare(connection)
        channel = connection.channel()
        for name in [*EVERY_CHANNEL_QUEUE.split(","), *DELAYED_QUEUES]:
            try:
                channel.queue_purge(name)
            except NotFound:
                channel = connection.channel()
        channel.close()


def channel_workers_kill(workers: Iterable[ManagedProcess]) -> None:
    """SIGKILL workers of the channel queues whose test is over (a warm shutdown only
    costs two seconds each), and wait until RabbitMQ has let them go: until then what
    they held unacknowledged is not back in its queue, and a purge would miss it."""
    for worker in workers:
        worker.kill()
    wait_for(lambda: not any(consumers for _, consumers in _channel_queue_counts().values()),
             "the channel queues without consumers", timeout=30)


@contextmanager
def worker_inspect(hostname: str, **options: Any) -> Iterator[Any]:
    """`celery inspect` of one worker, on a connection of its own: a pooled one may have
    died with a RabbitMQ an earlier test restarted, and nothing else of the test process
    may have replaced it since."""
    from config.celery import app as critical_app

    with critical_app.connection_for_write() as connection:
        yield critical_app.control.inspect(destination=[hostname], connection=connection, **options)


def _worker_busy(hostname: str) -> bool:
    """Whether the worker holds a task: running, prefetched (unacknowledged) or waiting
    for its ETA. No answer counts as busy."""
    with worker_inspect(hostname, timeout=5.0, limit=1) as inspect:
        for held in (inspect.active(), inspect.reserved(), inspect.scheduled()):
            if not held or held.get(hostname):
                return True
    return False


def pipeline_settled(worker: CeleryWorker) -> bool:
    """Nothing of the pipeline is left to happen: the channel queues and the delayed ones
    are empty, `worker` holds no task, and every delivery is final."""
    from notifications.models import Delivery

    unfinished = Delivery.objects.filter(status__in=[Delivery.Status.PENDING, Delivery.Status.SENDING])
    return (
        not any(messages for messages, _ in _queue_counts([*EVERY_CHANNEL_QUEUE.split(","), *DELAYED_QUEUES]).values())
        and not _worker_busy(worker.hostname)
        and not unfinished.exists()
    )


def wait_until_settled(worker: CeleryWorker, timeout: float = 30.0) -> None:
    """Wait until nothing more can reach a provider (`pipeline_settled`), twice in a row:
    a message on its way from RabbitMQ to the worker is in neither count for a moment."""
    wait_for(lambda: pipeline_settled(worker) and pipeline_settled(worker), "the pipeline settled", timeout)


class SharedPipelineWorker:
    """The session's critical worker on every channel queue, started on first use. A test
    that starts workers of its own (faults: SIGKILL, special environment) stops it first,
    so that no message of that test goes to it."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self.process: CeleryWorker | None = None
        self.starts = 0

    def running(self) -> CeleryWorker:
        if self.process is None or self.process.process.poll() is not None:
            self.stop()
            self.process = celery_worker_start(
                "config.celery", f"pipeline-shared-{self.starts}", CHANNEL_QUEUES, env=self.env, concurrency=2
            )
            self.starts += 1
        return self.process

    def stop(self) -> None:
        if self.process is not None:
            channel_workers_kill([self.process])
            self.process = None


@pytest.fixture(scope="session")
def shared_pipeline_worker(session_pipeline_env: dict[str, str]) -> Iterator[SharedPipelineWorker]:
    shared = SharedPipelineWorker(session_pipeline_env)
    yield shared
    shared.stop()


@pytest.fixture
def pipeline_worker(
    shared_pipeline_worker: SharedPipelineWorker, transactional_db: None, sandbox: SandboxClient,
    pipeline_settings: None,
) -> Iterator[CeleryWorker]:
    """The session's pipeline worker, for a test that only needs one running. What an
    earlier test left in the channel queues is purged first; afterwards the test waits
    until the pipeline settled, so nothing of it runs into the next test (while its
    database rows still exist). A worker that does not settle is replaced."""
    _channel_queues_purge()
    worker = shared_pipeline_worker.running()
    yield worker
    try:
        wait_until_settled(worker)
    except AssertionError:
        shared_pipeline_worker.stop()
        _channel_queues_purge()


@pytest.fixture
def start_pipeline_worker(
    pipeline_env: dict[str, str], shared_pipeline_worker: SharedPipelineWorker
) -> Iterator[Callable[..., ManagedProcess]]:
    """Start critical workers on the transactional channel queues (or on `queues`); each
    is stopped after the test. The shared worker is stopped first, and what an earlier
    test left in the channel queues purged: the test's messages go to its own workers."""
    shared_pipeline_worker.stop()
    _channel_queues_purge()
    started: list[ManagedProcess] = []

    def start(name: str = "pipeline-worker", queues: str = CHANNEL_QUEUES, **env: str) -> ManagedProcess:
        process = celery_worker_start(
            "config.celery",
            f"{name}-{len(started)}",
            queues,
            env={**pipeline_env, **env},
            concurrency=2,
        )
        started.append(process)
        return process

    yield start
    channel_workers_kill(started)


def relay_start(name: str, env: dict[str, str]) -> ManagedProcess:
    """Start an outbox relay polling every 0.2 s; answer once it runs."""
    process = ManagedProcess(name, python("manage.py", "relay_outbox", "--poll", "0.2"), env=env)
    process.wait_for_log("relay: started")
    return process


@pytest.fixture
def relay_process(pipeline_env: dict[str, str]) -> Iterator[ManagedProcess]:
    """The outbox relay, publishing what the fast path could not (RabbitMQ away)."""
    process = relay_start("relay", pipeline_env)
    yield process
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
    name: str, env: dict[str, str] | None = None, port: int | None = None, *, wait: bool = True
) -> tuple[ManagedProcess, str]:
    """A real daphne serving config.asgi (on a free port unless given), answering /healthz
    (unless `wait` is false: then `daphne_wait` it, after starting others beside it)."""
    port = port or free_port()
    process = ManagedProcess(
        name,
        python("-m", "daphne", "-b", "127.0.0.1", "-p", str(port), "config.asgi:application"),
        env=env,
    )
    url = f"http://127.0.0.1:{port}"
    if wait:
        daphne_wait(process, url)
    return process, url


def daphne_wait(process: ManagedProcess, url: str) -> None:
    process.wait_until(lambda: _answers(f"{url}/healthz"), f"{process.name} /healthz")


@pytest.fixture(scope="session")
def second_daphne_url(django_db_setup: None) -> Iterator[str]:
    """Another daphne process beside `daphne_url`: fan-out must reach both."""
    process, url = start_daphne("daphne-2")
    yield url
    process.stop()
