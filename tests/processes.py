"""Start Carillon's real processes (sandbox, Celery workers, daphne) for integration tests."""

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from django.conf import settings

T = TypeVar("T")

ROOT = Path(__file__).resolve().parent.parent
LOG_DIR = ROOT / ".run" / "test-logs"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def subprocess_database_url() -> str:
    """The test database as a URL, for processes the tests start (pytest-django renamed it)."""
    db = settings.DATABASES["default"]
    if db["ENGINE"] == "django.db.backends.sqlite3":
        return f"sqlite:///{db['NAME']}"
    user = str(db["USER"]) + (f":{db['PASSWORD']}" if db.get("PASSWORD") else "")
    return f"postgres://{user}@{db['HOST']}:{db['PORT']}/{db['NAME']}"


class ManagedProcess:
    """A child process with its output in a log file, stopped (and reaped) by `stop`."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> None:
        LOG_DIR.mkdir(parents=True, exist_ok=True)
        self.name = name
        self.log_path = LOG_DIR / f"{name}.log"
        self._log = self.log_path.open("w")
        full_env = {**os.environ, "DATABASE_URL": subprocess_database_url(), "PYTHONUNBUFFERED": "1"}
        full_env.update(env or {})
        # Its own session: `kill` can then take the process and all its children at once.
        self.process = subprocess.Popen(
            argv, cwd=ROOT, env=full_env, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True
        )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_until(self, ready: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
        """Poll `ready` until it holds; fail with the process's log if it never does."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited ({self.process.returncode}):\n{self.log()}")
            if ready():
                return
            time.sleep(0.1)
        self.stop()  # a fixture that fails here never reaches its own teardown
        raise RuntimeError(f"{self.name}: {what} not seen in {timeout}s:\n{self.log()[-5000:]}")

    def wait_for_log(self, text: str, timeout: float = 60.0) -> None:
        self.wait_until(lambda: text in self.log(), f"log line {text!r}", timeout)

    def kill(self) -> None:
        """SIGKILL the process and every child it started, as a crash or OOM kill would."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def stop(self, timeout: float = 20.0) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        self._log.close()


def python(*args: str) -> list[str]:
    """argv running the current interpreter (the project's virtualenv)."""
    return [sys.executable, *args]


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
