"""Stopping child processes together: each gets SIGTERM before any is waited for, each is
reaped, and one that outlives the timeout is SIGKILLed. Ports for them are never handed
out twice."""

import subprocess
import sys
from pathlib import Path

from core.processes import ROOT, ManagedProcess, free_port, processes_stop

# On SIGTERM: note when it came, take half a second to shut down (as a Celery worker's
# warm shutdown does), note when it leaves, exit 3.
POLITE = """
import signal, sys, time
def leave(*_):
    print("term", time.time(), flush=True)
    time.sleep(0.5)
    print("exit", time.time(), flush=True)
    sys.exit(3)
signal.signal(signal.SIGTERM, leave)
print("up", flush=True)
time.sleep(60)
"""
# Ignores SIGTERM: only SIGKILL ends it.
STUBBORN = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('up', flush=True); time.sleep(60)"


def _start(name: str, code: str, log_dir: Path) -> ManagedProcess:
    process = ManagedProcess(name, [sys.executable, "-c", code], log_dir=log_dir)
    process.wait_for_log("up", timeout=30)  # its handler is in place
    return process


def _moment(process: ManagedProcess, what: str) -> float:
    [line] = [line for line in process.log().splitlines() if line.startswith(what)]
    return float(line.split()[1])


def test_every_process_is_signalled_before_any_is_waited_for_and_a_stubborn_one_is_killed(tmp_path: Path) -> None:
    first, second = (_start(f"polite-{n}", POLITE, tmp_path) for n in range(2))
    stubborn = _start("stubborn", STUBBORN, tmp_path)

    processes_stop([first, second, stubborn], timeout=3.0)

    assert [first.process.returncode, second.process.returncode] == [3, 3]  # each ran its own shutdown
    # Their shutdowns overlapped: the second was told to stop before the first had left
    # (one after another, it would have been told only once the first was gone).
    assert _moment(second, "term") < _moment(first, "exit")
    assert stubborn.process.returncode == -9  # SIGKILL once the timeout passed
    assert all(p._log.closed for p in [first, second, stubborn])


def test_a_port_is_never_handed_out_twice() -> None:
    # A fixture takes several ports before anything listens on them (a Redis primary, its
    # replica, three Sentinels): the kernel may offer a port it just offered again, and
    # the second server would then find the first on it.
    ports = [free_port() for _ in range(3000)]
    assert len(set(ports)) == len(ports)


def test_processes_side_by_side_are_never_handed_the_same_port() -> None:
    # The test passes and the bench take ports at the same time, each in its own process.
    takers = [
        subprocess.Popen(
            [sys.executable, "-c", "from core.processes import free_port\nprint(*(free_port() for _ in range(400)))"],
            cwd=ROOT, stdout=subprocess.PIPE, text=True,
        )
        for _ in range(4)
    ]
    ports = [int(port) for taker in takers for port in taker.communicate(timeout=60)[0].split()]
    assert len(ports) == 1600
    assert len(set(ports)) == len(ports)
