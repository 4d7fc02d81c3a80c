"""Start Carillon's real processes (sandbox, Celery workers, daphne) for integration tests."""

import asyncio
import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import pytest
import redis
from django.conf import settings
from django.db import connection as db_connection
from django.db import connections as db_connections

from config.env import SQLITE_ENGINE
from core.processes import ManagedProcess as BaseManagedProcess
from core.processes import free_port, processes_stop, python

__all__ = ["ManagedProcess", "free_port", "processes_stop", "python", "needs_own_postgres", "postgres_ctl", "rabbitmqctl", "subprocess_database_url", "wait_for", "await_for", "OwnRedis"]

T = TypeVar("T")

ROOT = Path(__file__).resolve().parent.parent
# Two passes at once (platform/test) keep their processes' logs apart.
LOG_DIR = Path(os.environ.get("CARILLON_TEST_LOG_DIR") or ROOT / ".run" / "test-logs")


def subprocess_database_url() -> str:
    """The test database as a URL, for processes the tests start (pytest-django renamed it)."""
    db = settings.DATABASES["default"]
    if db["ENGINE"] == SQLITE_ENGINE:
        return f"sqlite:///{db['NAME']}"
    user = str(db["USER"]) + (f":{db['PASSWORD']}" if db.get("PASSWORD") else "")
    return f"postgres://{user}@{db['HOST']}:{db['PORT']}/{db['NAME']}"


class ManagedProcess(BaseManagedProcess):
    """A Carillon process of the tests: it opens the test database, logs to LOG_DIR."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> None:
        env = {"DATABASE_URL": subprocess_database_url(), **(env or {})}
        super().__init__(name, argv, env=env, log_dir=LOG_DIR)


def wait_for(condition: Callable[[], T | None], what: str, timeout: float = 30.0) -> T:
    """Poll until `condition()` is truthy and return it; fail naming `what` otherwise."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout}s")
        time.sleep(0.1)


async def await_for(condition: Callable[[], T | None], what: str, timeout: float = 30.0) -> T:
    """`wait_for` inside an event loop: poll without blocking the loop's other tasks."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout}s")
        await asyncio.sleep(0.05)


def rabbitmqctl(*args: str) -> str:
    """Run rabbitmqctl against the suite's own RabbitMQ node (platform/test names it)."""
    node = os.environ["CARILLON_TEST_RABBITMQ_NODE"]
    script = f'source platform/lib.sh && rabbitmq rabbitmqctl -n "{node}" "$@"'
    result = subprocess.run(
        ["bash", "-c", script, "rabbitmqctl", *args], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    if result.returncode != 0:
        raise RuntimeError(f"rabbitmqctl {' '.join(args)} failed: {result.stderr}")
    return result.stdout


# For a test that stops the database under Carillon's processes: only in platform/test's
# PostgreSQL pass (SQLite is embedded, and a developer's own PostgreSQL is not ours to stop).
needs_own_postgres = pytest.mark.skipif(
    db_connection.vendor != "postgresql" or not os.environ.get("CARILLON_TEST_POSTGRES_DIR"),
    reason="stops the suite's own PostgreSQL (platform/test's PostgreSQL pass)",
)


def postgres_ctl(action: str) -> None:
    """`pg_ctl stop` or `restart` on the suite's own PostgreSQL (platform/test names its
    directory); `restart` also starts a stopped server with the options it last had. This
    process's own connections die with the server: they are closed, to open anew."""
    script = f'source platform/lib.sh && as_service_user postgres "$(postgres_bin)/pg_ctl" -D "$1" -l "$1/server.log" -m fast -w {action}'
    result = subprocess.run(
        ["bash", "-c", script, "pg_ctl", os.environ["CARILLON_TEST_POSTGRES_DIR"]],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    if result.returncode != 0:
        raise RuntimeError(f"pg_ctl {action} failed: {result.stdout} {result.stderr}")
    db_connections.close_all()


class OwnRedis:
    """A Redis of a test's own (platform/lib.sh's configuration), to stop and start again
    without touching the Redis every other test uses."""

    def __init__(self, directory: Path, *options: str) -> None:
        self.port = free_port()
        self.directory = directory
        self.options = options
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        subprocess.run(
            [
                "redis-server",
                str(ROOT / "platform" / "redis" / "redis.conf"),
                "--port",
                str(self.port),
                "--dir",
                str(self.directory),
                "--daemonize",
                "yes",
                "--pidfile",
                str(self.directory / "redis.pid"),
                "--logfile",
                str(self.directory / "redis.log"),
                *self.options,
            ],
            check=True,
        )
        client = redis.Redis.from_url(self.url)
        for _ in range(100):
            try:
                client.ping()
                return
            except redis.ConnectionError:
                subprocess.run(["sleep", "0.1"], check=True)
        raise RuntimeError(f"Redis on {self.port} did not start")

    def stop(self) -> None:
        """Shut it down and wait until it is gone: a Redis left running outlives the suite."""
        pid = int((self.directory / "redis.pid").read_text())
        subprocess.run(
            ["redis-cli", "-p", str(self.port), "shutdown", "nosave"], check=False, capture_output=True
        )
        try:
            wait_for(lambda: not _alive(pid), f"Redis {pid} on {self.port} exited", timeout=5)
        except AssertionError:
            os.kill(pid, signal.SIGKILL)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
