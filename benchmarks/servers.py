"""The processes under test (daphne serving Carillon, the bare broadcast server, Redis) and
what the benchmark reads of them: CPU seconds and resident memory from /proc."""

import os
import shlex
import socket
import time
from dataclasses import dataclass
from pathlib import Path

from core.processes import ManagedProcess, free_port, processes_stop, python

_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PROCFILE = Path(__file__).resolve().parents[1] / "platform" / "Procfile"
# What shapes a worker's throughput; a benchmark takes these from the Procfile and sets
# the rest (log level, host name) itself.
_WORKER_SHAPE = ("--concurrency", "--prefetch-multiplier")


@dataclass(frozen=True)
class ProcfileWorker:
    """A Celery worker of the critical app as platform/Procfile starts it."""

    name: str
    queues: tuple[str, ...]
    shape: tuple[str, ...]  # its concurrency and prefetch options, as written

    def command(self, *queues: str) -> list[str]:
        """This worker on its own queues and `queues`, quiet, for a benchmark to run."""
        return python("-m", "celery", "-A", "config.celery", "worker", "--loglevel", "WARNING",
                      "--hostname", f"{self.name}@%h", "--queues", ",".join([*queues, *self.queues]), *self.shape,
                      "--include", "benchmarks.baseline_tasks", "--without-mingle", "--without-gossip")


def procfile_workers() -> list[ProcfileWorker]:
    """The critical app's workers in platform/Procfile, in its order."""
    workers = []
    for line in PROCFILE.read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        name, _, command = line.partition(":")
        words = shlex.split(command)
        if words[:4] != ["celery", "-A", "config.celery", "worker"]:
            continue
        shape = [word for flag in _WORKER_SHAPE if flag in words for word in (flag, words[words.index(flag) + 1])]
        workers.append(ProcfileWorker(name, tuple(words[words.index("--queues") + 1].split(",")), tuple(shape)))
    return workers


def wait_port(port: int, *, process: ManagedProcess, timeout: float = 60.0) -> None:
    def listening() -> bool:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
        except OSError:
            return False
        return True

    process.wait_until(listening, f"a listener on port {port}", timeout)


def redis_start(*, work: Path, log_dir: Path) -> tuple[ManagedProcess, str]:
    """A Redis of the benchmark's own: nothing persisted, nothing shared with a running Carillon."""
    port = free_port()
    process = ManagedProcess(
        "redis", ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                  "--dir", str(work), "--maxclients", "10000",
                  # Redis drops a subscriber 32 MB behind (its default); 1 MB messages at
                  # 100/s need more room than that to measure anything.
                  "--client-output-buffer-limit", "pubsub 1gb 256mb 60"],
        log_dir=log_dir,
    )
    wait_port(port, process=process)
    return process, f"redis://127.0.0.1:{port}/0"


def daphne_start(*, name: str, log_dir: Path) -> tuple[ManagedProcess, int]:
    """daphne serving Carillon's ASGI application (the /ws/ and /events/ endpoints)."""
    port = free_port()
    process = ManagedProcess(
        name, python("-m", "daphne", "-b", "127.0.0.1", "-p", str(port), "config.asgi:application"), log_dir=log_dir
    )
    wait_port(port, process=process)
    return process, port


def uvicorn_start(*, name: str, log_dir: Path) -> tuple[ManagedProcess, int]:
    """uvicorn (websockets protocol) serving the same ASGI application as daphne."""
    port = free_port()
    process = ManagedProcess(
        name, python("-m", "uvicorn", "--host", "127.0.0.1", "--port", str(port), "--ws", "websockets",
                     "--log-level", "warning", "config.asgi:application"), log_dir=log_dir,
    )
    wait_port(port, process=process)
    return process, port


def bare_start(*, name: str, redis_url: str, channel: str, log_dir: Path) -> tuple[ManagedProcess, int]:
    """The baseline: a bare `websockets` server broadcasting one Redis subscription."""
    port = free_port()
    process = ManagedProcess(
        name, python("-m", "benchmarks.bare_server", "--port", str(port), "--redis-url", redis_url,
                     "--channel", channel),
        log_dir=log_dir,
    )
    wait_port(port, process=process)
    return process, port


def servers_start(kind: str, *, count: int, scenario: str, redis_url: str, channel: str,
                  log_dir: Path) -> tuple[list[ManagedProcess], list[int]]:
    """`count` server processes of one kind (`daphne`, `uvicorn`, or `bare`: the baseline
    broadcasting the Redis `channel`) and their ports; on a failure none is left running."""
    processes: list[ManagedProcess] = []
    ports: list[int] = []
    try:
        for index in range(count):
            name = f"{kind}-{scenario}-{index}"
            if kind == "daphne":
                process, port = daphne_start(name=name, log_dir=log_dir)
            elif kind == "uvicorn":
                process, port = uvicorn_start(name=name, log_dir=log_dir)
            else:
                process, port = bare_start(name=name, redis_url=redis_url, channel=channel, log_dir=log_dir)
            processes.append(process)
            ports.append(port)
    except BaseException:
        processes_stop(processes)
        raise
    return processes, ports


def process_tree(pid: int) -> list[int]:
    """`pid` and its descendants (a Celery worker's pool processes)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(parent, []).append(int(entry.name))
    tree, pending = [], [pid]
    while pending:
        current = pending.pop()
        tree.append(current)
        pending.extend(children.get(current, []))
    return tree


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time of the processes and their descendants, those that ended
    included (PostgreSQL's sessions, a Celery worker's replaced pool processes: each
    process's ended children count in its own times once it has waited for them), in
    seconds."""
    total = 0
    for root in pids:
        for pid in process_tree(root):
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            total += sum(int(ticks) for ticks in fields[11:15])  # utime, stime, cutime, cstime
    return total / _CLOCK_TICKS


def listener_pid(port: int) -> int | None:
    """The process on this machine listening on TCP `port` (a service the benchmark did not
    start: RabbitMQ, PostgreSQL); None if there is none, or /proc does not tell (another
    user's process descriptors are readable by root only)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            # local address "0100007F:1F90", state 0A: listening
            if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == "0A":
                inodes.add(f"socket:[{fields[9]}]")
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if any(os.readlink(fd) in inodes for fd in (entry / "fd").iterdir()):
                return int(entry.name)
        except OSError:
            continue
    return None


def rss_kib(pids: list[int]) -> int:
    """Resident memory of the processes (and their descendants), in KiB."""
    total = 0
    for root in pids:
        for pid in process_tree(root):
            try:
                status = Path(f"/proc/{pid}/status").read_text()
            except OSError:
                continue
            for line in status.splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
    return total


class ServerStats:
    """CPU used by the server processes between `start()` and `stop()`, and their RSS."""

    def __init__(self, pids: list[int]) -> None:
        self.pids = pids
        self.cpu_start = 0.0
        self.wall_start = 0.0
        self.result: dict[str, float] = {}

    def start(self) -> None:
        self.cpu_start, self.wall_start = cpu_seconds(self.pids), time.monotonic()

    def stop(self) -> dict[str, float]:
        cpu = cpu_seconds(self.pids) - self.cpu_start
        wall = time.monotonic() - self.wall_start
        self.result = {
            "processes": len(self.pids),
            "cpu_seconds": round(cpu, 3),
            "cpu_utilisation": round(cpu / wall, 3) if wall else 0.0,
            "rss_kib": rss_kib(self.pids),
        }
        return self.result
