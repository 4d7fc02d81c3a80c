"""Stopping child processes together: each gets SIGTERM, is reaped, and is SIGKILLed if it
outlives the timeout."""

import sys
from pathlib import Path

from core.processes import ManagedProcess, processes_stop

# Exits on SIGTERM after a short cleanup, as a Celery worker's warm shutdown does.
POLITE = "import signal, sys, time; signal.signal(signal.SIGTERM, lambda *a: sys.exit(3)); print('up', flush=True); time.sleep(60)"
# Ignores SIGTERM: only SIGKILL ends it.
STUBBORN = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('up', flush=True); time.sleep(60)"


def _start(name: str, code: str, log_dir: Path) -> ManagedProcess:
    process = ManagedProcess(name, [sys.executable, "-c", code], log_dir=log_dir)
    process.wait_for_log("up", timeout=30)  # its handler is in place
    return process


def test_every_process_is_stopped_and_one_that_ignores_sigterm_is_killed(tmp_path: Path) -> None:
    polite = [_start(f"polite-{n}", POLITE, tmp_path) for n in range(2)]
    stubborn = _start("stubborn", STUBBORN, tmp_path)

    processes_stop([*polite, stubborn], timeout=1.0)

    assert [p.process.returncode for p in polite] == [3, 3]  # each ran its own shutdown
    assert stubborn.process.returncode == -9  # SIGKILL once the timeout passed
    assert all(p._log.closed for p in [*polite, stubborn])
