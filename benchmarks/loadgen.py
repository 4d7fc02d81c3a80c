"""Load generators: open-loop schedules, in processes of their own, with a progress bar.

A load generator is a function `target(config, link)` run in a spawned process. It sets up
(connects its clients), calls `link.ready()`, gets the shared time window from
`link.wait_start()`, sends on the schedule, and returns its result with `link.done(...)`.
The coordinator starts them all, gives them one start time, shows the progress, and
measures the server processes over the measured part of the window.
"""

import asyncio
import multiprocessing
import queue
import resource
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from benchmarks.servers import ServerStats

# One source address holds ~28k client ports towards one server address and port (the
# ephemeral range 32768–60999); past that, connections come from 127.0.0.2, .3, ...
CONNECTIONS_PER_SOURCE = 25_000
# Each process stays under its hard limit of file descriptors, with room for its own.
MAX_CONNECTIONS_PER_PROCESS = 19_000


_next_source_block = 0


def source_base(connections: int) -> int:
    """A fresh range of source addresses for a series of `connections` clients, as an index
    to add to each client's: the ports the last series closed linger in TIME_WAIT for a
    minute, and bind() will not hand them out again from the same address."""
    global _next_source_block
    base = _next_source_block * CONNECTIONS_PER_SOURCE
    _next_source_block = (_next_source_block + -(-connections // CONNECTIONS_PER_SOURCE)) % 250
    return base


def source_address(index: int) -> str:
    """The loopback source address of the `index`-th client connection (from `source_base`)."""
    return f"127.0.0.{1 + index // CONNECTIONS_PER_SOURCE}"


def fd_limit_raise() -> int:
    """Raise this process's soft limit of open files to its hard limit; return it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


@dataclass(frozen=True)
class Window:
    """Wall-clock times (time.time()) shared by every process of a run."""

    start: float
    measure_from: float  # the warm-up ends: requests due before this are not recorded
    end: float  # no request is due at or after this

    def measured(self, due: float) -> bool:
        return self.measure_from <= due < self.end


def schedule(*, rate: float, window: Window, index: int = 0, count: int = 1) -> list[tuple[int, float]]:
    """The (request number, due time) pairs of load generator `index` of `count`: request i
    is due at start + i / rate, whatever happened to the ones before it (open loop)."""
    total = int((window.end - window.start) * rate)
    return [(i, window.start + i / rate) for i in range(index, total, count)]


async def open_loop(plan: list[tuple[int, float]], fire: Callable[[int, float], None]) -> None:
    """Call `fire(i, due)` for each request at its due time. `fire` must not block: it
    starts the request (a task, a write) and returns. Late requests fire at once, in order,
    and their latency is still counted from their due time."""
    for number, due in plan:
        # Never early: the loop's timer may wake a little before the due time.
        while (delay := due - time.time()) > 0:
            await asyncio.sleep(delay)
        fire(number, due)


def sync_open_loop(plan: list[tuple[int, float]], send: Callable[[int, float], None]) -> None:
    """`open_loop` for blocking clients: a slow send delays the next ones, whose latency,
    counted from their due time, shows it (no coordinated omission)."""
    for number, due in plan:
        delay = due - time.time()
        if delay > 0:
            time.sleep(delay)
        send(number, due)


class Link:
    """What a load generator process shares with the coordinator."""

    def __init__(self, index: int, results: Any, go: Any, start: Any, progress: Any, release: Any) -> None:
        self.index = index
        self._results, self._go, self._start, self._progress = results, go, start, progress
        self._release = release
        self.warmup = 0.0
        self.duration = 0.0

    def ready(self) -> None:
        self._results.put(("ready", self.index, None))

    def wait_start(self, timeout: float = 600.0) -> Window:
        if not self._go.wait(timeout):
            raise TimeoutError("the coordinator never started the run")
        start = self._start.value
        return Window(start, start + self.warmup, start + self.warmup + self.duration)

    def count(self, value: int) -> None:
        """Report how many requests this process has completed (for the progress bar)."""
        self._progress[self.index] = value

    def hold(self, timeout: float = 600.0) -> None:
        """Say that everything is in place (all connections up) and wait until the
        coordinator has looked at the servers (run_load's `on_held`)."""
        self._results.put(("held", self.index, None))
        self._release.wait(timeout)

    def done(self, result: dict[str, Any]) -> None:
        self._results.put(("done", self.index, result))

    def failed(self, error: str) -> None:
        self._results.put(("failed", self.index, error))


def _child(target: Callable[[dict[str, Any], Link], None], config: dict[str, Any], link: Link) -> None:
    try:
        target(config, link)
    except BaseException as exc:  # the coordinator must hear of it instead of waiting
        import traceback

        link.failed(f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}")
        raise


class Progress:
    """A one-line progress bar on stderr."""

    def __init__(self, label: str, total: float) -> None:
        self.label, self.total = label, total
        # Redrawn in place on a terminal; into a log or a pipe, one line every ~10 seconds.
        self.interactive = sys.stderr.isatty()
        self.last_line = -1

    def show(self, done: float, extra: str = "") -> None:
        if not self.interactive:
            if int(done // 10) == self.last_line:
                return
            self.last_line = int(done // 10)
        fraction = min(1.0, max(0.0, done / self.total)) if self.total else 1.0
        bar = "#" * int(30 * fraction) + "-" * (30 - int(30 * fraction))
        line = f"  {self.label:<34} [{bar}] {done:5.1f}/{self.total:.0f}s {extra:<28}"
        sys.stderr.write(f"\r{line}" if self.interactive else f"{line}\n")
        sys.stderr.flush()

    def finish(self) -> None:
        sys.stderr.write("\n" if self.interactive else "")
        sys.stderr.flush()


def run_load(
    target: Callable[[dict[str, Any], Link], None],
    configs: list[dict[str, Any]],
    *,
    label: str,
    warmup: float,
    duration: float,
    server_pids: list[int],
    drain: float = 3.0,
    setup_timeout: float = 600.0,
    on_held: Callable[[], None] | None = None,
) -> tuple[list[dict[str, Any]], dict[str, float]]:
    """Run one load generator process per config over one window; return their results and
    the server processes' CPU (over the measured part) and RSS. With `on_held`, the load
    generators call `link.hold()` after the window; once all have, `on_held()` runs."""
    context = multiprocessing.get_context("spawn")  # a fork would share Django's sockets
    results, go, release, start = context.Queue(), context.Event(), context.Event(), context.Value("d", 0.0)
    progress = context.Array("q", len(configs))
    processes = []
    for index, config in enumerate(configs):
        link = Link(index, results, go, start, progress, release)
        link.warmup, link.duration = warmup, duration
        process = context.Process(target=_child, args=(target, config, link), daemon=True)
        process.start()
        processes.append(process)
    outcomes: dict[int, dict[str, Any]] = {}
    try:
        _await(results, processes, "ready", setup_timeout, outcomes)
        stats = ServerStats(server_pids)
        start.value = time.time() + 0.5
        go.set()
        bar = Progress(label, warmup + duration + drain)
        while (elapsed := time.time() - start.value) < warmup + duration + drain:
            if elapsed >= warmup and not stats.wall_start:
                stats.start()
            if elapsed >= warmup + duration and not stats.result:
                stats.stop()
            bar.show(max(0.0, elapsed), f"{sum(progress[:]):,} done")
            time.sleep(0.25)
        bar.show(warmup + duration + drain, f"{sum(progress[:]):,} done")
        bar.finish()
        if not stats.result:
            stats.stop()
        if on_held is not None:
            _await(results, processes, "held", setup_timeout, outcomes)
            on_held()
            release.set()
        _await(results, processes, "done", 120.0 + duration, outcomes)
    finally:
        for process in processes:
            process.join(10)
            if process.is_alive():
                process.terminate()
    return [outcomes[index] for index in range(len(configs))], stats.result


def _await(results: Any, processes: list[Any], state: str, timeout: float, outcomes: dict[int, Any]) -> None:
    waiting = set(range(len(processes)))
    deadline = time.monotonic() + timeout
    while waiting:
        try:
            kind, index, payload = results.get(timeout=1.0)
        except queue.Empty:  # check that nobody died silently
            if time.monotonic() > deadline:
                raise TimeoutError(f"load generators {sorted(waiting)} not {state} after {timeout:.0f}s") from None
            dead = [i for i in waiting if not processes[i].is_alive()]
            if dead:
                raise RuntimeError(f"load generator {dead[0]} exited before it was {state}") from None
            continue
        if kind == "failed":
            raise RuntimeError(f"load generator {index} failed: {payload}")
        if kind == state:
            waiting.discard(index)
            if payload is not None:
                outcomes[index] = payload
