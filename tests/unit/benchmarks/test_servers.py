"""What the benchmark reads of processes from /proc: the CPU time of a process tree, and a
service it did not start (RabbitMQ, PostgreSQL) found by the port it listens on."""

import os
import socket
import subprocess
import sys

from benchmarks.servers import cpu_seconds, listener_pid

# A child that runs a grandchild burning 0.3 s of CPU, waits for it to end, then says so
# and waits: the grandchild is gone, its time is in the child's.
BURN_THEN_WAIT = r"""
import subprocess, sys
subprocess.run([sys.executable, "-c", "import time\nend = time.process_time() + 0.3\nwhile time.process_time() < end: pass"])
print("done", flush=True)
sys.stdin.read()
"""


def test_cpu_time_counts_the_descendants_that_ended() -> None:
    with subprocess.Popen([sys.executable, "-c", BURN_THEN_WAIT], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                          text=True) as child:
        assert child.stdout is not None and child.stdout.readline() == "done\n"

        used = cpu_seconds([child.pid])

        assert child.stdin is not None
        child.stdin.close()
    assert used >= 0.3


def test_the_process_listening_on_a_port_is_found_and_a_port_nobody_listens_on_finds_none() -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        port = server.getsockname()[1]
        with socket.socket() as bound_only:  # bound, not listening: not a server
            bound_only.bind(("127.0.0.1", 0))
            assert listener_pid(bound_only.getsockname()[1]) is None
        assert listener_pid(port) is None
        server.listen()

        assert listener_pid(port) == os.getpid()
