"""Child processes Carillon starts for tests and benchmarks: its workers, daphne, the sandbox."""

import fcntl
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


# Ports handed out lately, by any process of this checkout (the test passes and the bench
# run side by side), as one file per port: the kernel may offer a port it has just
# offered again, since nothing listens on it until the caller starts its server, and two
# servers would be given the same port. A port handed out longer ago than the hold is
# listened on by now, or was not used: it may be handed out again.
PORTS_DIR = ROOT / ".run" / "ports"
PORT_HOLD_SECONDS = 120.0


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now, and that no process of
    this checkout was handed in the last two minutes."""
    PORTS_DIR.mkdir(parents=True, exist_ok=True)
    while True:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = int(probe.getsockname()[1])
        if _port_claim(PORTS_DIR / str(port)):
            return port


def _port_claim(path: Path) -> bool:
    try:
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        return True  # never handed out, or not since its file was cleared
    except FileExistsError:
        pass
    # Handed out before: take it again only once the hold is over, one process at a time
    # (two that both saw the old time would otherwise both take it).
    with (PORTS_DIR / ".lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if time.time() - path.stat().st_mtime < PORT_HOLD_SECONDS:
            return False
        os.utime(path)
        return True


def python(*args: str) -> list[str]:
    """argv running the current interpreter (the project's virtualenv)."""
    return [sys.executable, *args]


class ManagedProcess:
    """A child process with its output in a log file, stopped (and reaped) by `stop`."""

    def __init__(self, name: str, argv: list[str], *, env: dict[str, str] | None = None, log_dir: Path) -> None:
        log_dir.mkdir(parents=True, exist_ok=True)
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        self._log = self.log_path.open("w")
        full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        # Its own session: `kill` can then take the process and all its children at once.
        self.process = subprocess.Popen(  # noqa: S603 - argv built by Carillon itself
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
        """SIGKILL the process and every child it started, as a crash or OOM kill would.
        Also the quick way to end a process whose work is over: nothing is left to finish."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        self._log.close()

    def stop(self, timeout: float = 20.0) -> None:
        processes_stop([self], timeout)

    def _reap(self, deadline: float) -> None:
        """Wait for the process until `deadline` (monotonic), SIGKILL it past that; close its log."""
        try:
            self.process.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            self.kill()
        self._log.close()


def processes_stop(processes: Iterable[ManagedProcess], timeout: float = 20.0) -> None:
    """Stop them together: SIGTERM to each, then reap each; any still running `timeout`
    seconds after the signal is SIGKILLed. A Celery worker's warm shutdown takes a second
    or two: side by side they overlap instead of adding up."""
    processes = list(processes)
    for item in processes:
        if item.process.poll() is None:
            item.process.terminate()
    deadline = time.monotonic() + timeout
    for item in processes:
        item._reap(deadline)
