"""The `ordered` benchmark (`manage.py bench ordered`): ordered per-room delivery beside
its two baselines, in one run, against the sandbox's chat platform.

- unordered: every message handed to the platform at once (one task each, no room
  state): the capacity of the send path, and the order violations that ordering exists to prevent.
- naive: the usual first fix, a fixed pause after every message (one task per room that
  sends, sleeps, sends): it holds a worker for every pause.
- ordered: `room_message_enqueue`, the shard owners (rooms/owner.py, two sharing the shards),
  acks by webhook through daphne, lost acks ended by the ack timeout.

Messages come as a burst per room (a room's messages one after the other, as a user
types them), rooms one after the other. The first three phases enqueue everything at
once: their latencies include queueing behind the whole backlog, and the ordered one's
messages/s is what a burst reports, not a rate the path sustains (a message whose ack
is still on its way when its 1 s timeout fires ends all the same, and a saturated burst
ends thousands that way). Then ordered phases at fixed rates (open loop: intended times
fixed in advance) find the *sustained* rate: from half the burst's, stepping up while a
rate holds (the producer keeps pace, at most 1 % of the messages time out beyond the
acks the platform lost, and the overhead below stays within 150 ms at p99) and down
while it does not; the highest rate held is the
sustained throughput, compared with the unordered baseline. With `--rate R`, one phase
at R instead, about a minute long. A paced phase measures the *overhead*
of a message: from the later of its intended enqueue time and the end of its
predecessor (ack or timeout recorded) to the platform's answer for it (`sent_at`), i.e.
what ordering costs beyond the wait for the previous ack. The platform's order counts come
from the sandbox (`order_violations`: arrival order at the API;
`delivery_order_violations`: the order in which messages reach the device, each one
its ack delay after arrival).

`bench_ordered_isolated` runs it without touching a running Carillon: its own RabbitMQ
virtual host, SQLite database, sandbox, daphne and workers, as `bench pipeline` does.
"""

import json
import os
import platform
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import requests
from django.conf import settings
from django.db import connection

from benchmarks.hdr import (
    histogram_new,
    histogram_percentiles_ms,
    histogram_record,
    histogram_write_hgrm,
)
from benchmarks.plot import percentile_plot
from benchmarks.runner import Options
from benchmarks.servers import cpu_seconds, listener_pid
from config.env import BASE_DIR
from core.processes import ManagedProcess, free_port, processes_stop, python

DEFAULT_ROOMS = 25_000
DEFAULT_WORKERS = 2
SANDBOX_URL_VARIABLE = "CARILLON_BENCH_SANDBOX_URL"
LOG_DIR = BASE_DIR / ".run" / "bench-logs"

# The reference scenario: ~100 ms ack latency with jitter, 5 % of acks lost. Normal
# jitter has a tail, as real latencies do: a fixed pause is then sometimes too short.
ACK_DELAY_MS = 100
ACK_JITTER_MS = 30
ACK_LOSS_RATE = 0.05
# The shortest timeout the delayed timeout check can express (rooms.tasks).
ACK_TIMEOUT_MS = 1000
# How long a phase waits, once its messages ended, for the platform's last acks.
ACKS_SETTLE_S = 60.0
# Threads enqueueing the ordered phases' messages (rooms split between them).
ENQUEUERS = 4
# The naive fix pauses as long as an ack usually takes.
NAIVE_PAUSE_MS = ACK_DELAY_MS
# The naive fix holds a worker for every pause: a few hundred rooms show its rate.
NAIVE_ROOMS = 300
# A rate holds when at most this share of its messages ended by their timeout while their
# ack was on its way (beyond the acks the platform lost): more, and the acks' path is
# behind, each late ack a message that waited its full timeout.
LATE_MAX = 0.01
# ... and when its messages' overhead beyond the previous ack stayed within the latency a
# message may take through Carillon (p99): past it, a backlog is building somewhere.
OVERHEAD_P99_MAX_MS = 150
# The search for the sustained rate: each step this much above (or below) the last, about
# this long, at most this many (two with --quick: the code path, not a figure).
RATE_STEP = 1.15
STEP_SECONDS = 20
STEPS_MAX = 8


def _wait(condition: Callable[[], bool], what: str, timeout: float, *, required: bool = True) -> None:
    """Wait for `condition`, at most `timeout` seconds; past it, fail naming `what`, or go
    on without it when it is not `required`."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            if not required:
                return
            raise TimeoutError(f"bench ordered: {what} not reached within {timeout:.0f}s")
        time.sleep(0.5)


class ChatPlatform:
    """The sandbox's chat platform, as the bench drives it."""

    def __init__(self, url: str) -> None:
        self.url = url.rstrip("/")
        self.http = requests.Session()

    def reset(self, **knobs: Any) -> None:
        self.http.post(f"{self.url}/api/reset", timeout=30).raise_for_status()
        self.http.put(f"{self.url}/api/knobs/chat", json=knobs, timeout=30).raise_for_status()

    def room_ack_delay(self, room: str, delay_ms: float) -> None:
        """Make one room's acks come after `delay_ms` (until the next reset)."""
        self.http.put(f"{self.url}/api/chat/rooms/{room}", json={"callback_delay_ms": delay_ms},
                      timeout=30).raise_for_status()

    def accepted(self) -> int:
        answer = self.http.get(f"{self.url}/api/received/chat", params={"limit": 0}, timeout=30)
        answer.raise_for_status()
        return int(answer.json()["chat"]["accepted"])

    def received(self, count: int) -> list[dict[str, Any]]:
        answer = self.http.get(f"{self.url}/api/received/chat", params={"limit": count}, timeout=120)
        answer.raise_for_status()
        return list(answer.json()["chat"]["received"])

    def counts(self) -> dict[str, int]:
        answer = self.http.get(f"{self.url}/api/chat/rooms", params={"summary": 1}, timeout=30)
        answer.raise_for_status()
        body = answer.json()
        return {key: int(body[key]) for key in
                ("order_violations", "delivery_order_violations", "duplicates", "acks_sent", "acks_lost")}


def _knobs() -> dict[str, Any]:
    return {"callback_delay_ms": ACK_DELAY_MS, "callback_jitter_ms": ACK_JITTER_MS,
            "callback_loss_rate": ACK_LOSS_RATE, "callback_distribution": "normal"}


def bench_direct(chat: ChatPlatform, *, name: str, rooms: int, messages_per_room: int, pause_ms: int,
                 timeout: float, cpu: Callable[[], dict[str, float]] = dict) -> dict[str, Any]:
    """A baseline: messages straight to the platform, no room state (see the module doc).
    `cpu()` as for `bench_ordered`."""
    from benchmarks.baseline_tasks import bench_room_send_direct

    chat.reset(**_knobs())
    tag = uuid.uuid4().hex[:8]
    total = rooms * messages_per_room
    cpu_before = cpu()
    started = time.time()
    if pause_ms:  # the naive fix: one task per room, pausing after each message
        for room in range(rooms):
            messages = [[seq, str(uuid.uuid4()), str(time.time())] for seq in range(1, messages_per_room + 1)]
            bench_room_send_direct.delay(f"{tag}-{room}", messages, pause_ms)
    else:  # unordered: one task per message, each room's burst back to back
        # From as many threads as the ordered phases enqueue with: one thread waiting for
        # each publish's confirm would measure the publisher, not the send path.
        def publish(thread: int) -> None:
            for room in range(thread, rooms, ENQUEUERS):
                for seq in range(1, messages_per_room + 1):
                    bench_room_send_direct.delay(f"{tag}-{room}", [[seq, str(uuid.uuid4()), str(time.time())]], 0)

        with ThreadPoolExecutor(ENQUEUERS) as pool:
            list(pool.map(publish, range(ENQUEUERS)))
    _wait(lambda: chat.accepted() >= total, f"{name}: {total} messages at the platform", timeout)
    cpu_used = _cpu_per_message(cpu_before, cpu(), total)
    latency = histogram_new()
    arrivals = chat.received(total)
    for item in arrivals:
        histogram_record(latency, item["received_at"] - float(item["body"]))
    seconds = max(item["received_at"] for item in arrivals) - started
    return {
        "name": name, "rooms": rooms, "messages": total, "seconds": round(seconds, 2),
        "messages_per_second": round(total / seconds, 1), "pause_ms": pause_ms,
        "enqueue_to_provider_ms": histogram_percentiles_ms(latency), "platform": chat.counts(),
        "cpu_ms_per_message": cpu_used, "_histograms": {"enqueue-to-provider": latency},
    }


def bench_ordered(chat: ChatPlatform, *, rooms: int, messages_per_room: int, timeout: float,
                  rate: float | None = None, batch: int = 1,
                  cpu: Callable[[], dict[str, float]] = dict, late_room: bool = False) -> dict[str, Any]:
    """Ordered delivery through the room state machine, acks by webhook; all at once, or
    at a fixed `rate` of messages/s (the body carries each message's intended time).
    Each enqueuing thread hands over the messages due, up to `batch` at a time. `cpu()`
    gives the CPU seconds each part of the path has used so far: the phase reports their
    milliseconds per message. With `late_room`, the first room's acks come well after their
    timeout, so that the phase has acks to wait for once its messages ended."""
    from rooms.models import ChatProvider, Room, RoomMessage, room_shard
    from rooms.services.enqueue import room_message_enqueue, room_messages_enqueue

    chat.reset(**_knobs())
    provider = ChatProvider.objects.create(
        name=f"bench-{uuid.uuid4().hex[:8]}", ack_timeout_ms=ACK_TIMEOUT_MS,
        timeout_policy=ChatProvider.TimeoutPolicy.PROCEED,
    )
    recipients = [f"{provider.name}-{n}" for n in range(rooms)]
    if late_room:
        chat.room_ack_delay(recipients[0], ACK_TIMEOUT_MS * 2.5)
    room_ids = [room.pk for room in Room.objects.bulk_create(
        [Room(provider=provider, recipient=recipient, shard=room_shard(provider_id=provider.pk, recipient=recipient))
         for recipient in recipients]
    )]
    if not all(room_ids):  # SQLite and PostgreSQL return bulk-created keys
        room_ids = list(Room.objects.filter(provider=provider).order_by("pk").values_list("pk", flat=True))
    total = rooms * messages_per_room
    calls = [0] * ENQUEUERS  # per thread: enqueue calls made (messages / calls: the groups' mean size)
    cpu_before = cpu()
    started = time.time()

    def enqueue(thread: int) -> None:
        """This thread's rooms (every ENQUEUERS-th), each room's messages in order; at a
        `rate`, each message at its intended time (the n-th of all at started + n / rate),
        which its body carries. The messages due are handed over together, up to `batch`:
        all of them at once, or at a rate those that fell due while the thread was busy."""
        due: list[tuple[int, str]] = []

        def hand_over() -> None:
            if not due:
                return
            if batch == 1:
                ((room_id, body),) = due
                room_message_enqueue(room_id=room_id, body=body)
            else:
                room_messages_enqueue(messages=due)
            calls[thread] += 1
            due.clear()

        for position in range(thread, len(room_ids), ENQUEUERS):
            for seq in range(messages_per_room):
                intended = started + (position * messages_per_room + seq) / rate if rate else time.time()
                if len(due) == batch or intended > time.time():
                    hand_over()
                time.sleep(max(0.0, intended - time.time()))
                due.append((room_ids[position], str(intended)))
        hand_over()
        connection.close()  # this thread's

    # As several API processes would: an enqueue mostly waits (its commit, its confirm),
    # and one loop alone fell behind the paced rate on a loaded machine.
    with ThreadPoolExecutor(ENQUEUERS) as pool:
        list(pool.map(enqueue, range(ENQUEUERS)))
    enqueued = time.time()
    done = (RoomMessage.Status.ACKED, RoomMessage.Status.TIMED_OUT, RoomMessage.Status.SKIPPED,
            RoomMessage.Status.FAILED)
    pending = RoomMessage.objects.filter(room__provider=provider).exclude(status__in=done)
    _wait(lambda: not pending.exists(), f"ordered: {total} messages acked or timed out", timeout)
    # A message ends at its ack or at its timeout, with its ack maybe still on its way (a
    # burst of 50,000 leaves tens of thousands): the phase is over, and its CPU counted,
    # once the platform has sent or dropped every ack, not in the next phase's time.
    # A webhook the platform failed to deliver is never counted: go on without it.
    _wait(lambda: sum(chat.counts()[kind] for kind in ("acks_sent", "acks_lost")) >= total,
          "every ack sent or dropped", ACKS_SETTLE_S, required=False)
    cpu_after = cpu()

    overhead, to_provider, idle_to_provider = histogram_new(), histogram_new(), histogram_new()
    rows = (RoomMessage.objects.filter(room__provider=provider).order_by("room_id", "sequence")
            .values_list("room_id", "body", "sent_at", "finished_at", "status"))
    previous_room, previous_finished = None, None
    last_finished = started
    statuses: dict[str, int] = {}
    unsent = sent_early = 0
    for room_id, body, sent_at, finished_at, status in rows:
        statuses[status] = statuses.get(status, 0) + 1
        enqueued_at = datetime.fromtimestamp(float(body), tz=UTC)
        ready = enqueued_at
        first_of_room = room_id != previous_room  # enqueued into a room with nothing in flight
        if not first_of_room and previous_finished is not None:
            ready = max(enqueued_at, previous_finished)
        previous_room, previous_finished = room_id, finished_at
        if finished_at is not None:
            last_finished = max(last_finished, finished_at.timestamp())
        if sent_at is None:  # acked before the worker recorded its send: no overhead to take
            unsent += 1
            continue
        if sent_at < ready:  # handed over before its predecessor ended: ordering broken
            sent_early += 1
            continue
        histogram_record(overhead, (sent_at - ready).total_seconds())
        histogram_record(to_provider, (sent_at - enqueued_at).total_seconds())
        if first_of_room:
            histogram_record(idle_to_provider, (sent_at - enqueued_at).total_seconds())
    seconds = last_finished - started
    timeouts = sum(Room.objects.filter(provider=provider).values_list("timeouts", flat=True))
    return {
        "name": f"ordered at {rate:.0f}/s" if rate else "ordered", "rooms": rooms, "messages": total, "seconds": round(seconds, 2),
        "messages_per_second": round(total / seconds, 1),
        "enqueue_seconds": round(enqueued - started, 2), "ack_timeout_ms": ACK_TIMEOUT_MS,
        "enqueue_batch": batch, "enqueue_calls": sum(calls), "statuses": statuses, "timeouts": timeouts,
        "sent_before_predecessor_ended": sent_early, "send_not_recorded": unsent,
        "overhead_beyond_previous_ack_ms": histogram_percentiles_ms(overhead),
        "enqueue_to_provider_ms": histogram_percentiles_ms(to_provider),
        "enqueue_to_provider_idle_room_ms": histogram_percentiles_ms(idle_to_provider),
        "platform": chat.counts(),
        "cpu_ms_per_message": _cpu_per_message(cpu_before, cpu_after, total),
        "_histograms": {"overhead": overhead, "enqueue-to-provider": to_provider,
                        "enqueue-to-provider-idle-room": idle_to_provider},
    }


def _cpu_per_message(before: dict[str, float], after: dict[str, float], messages: int) -> dict[str, float]:
    """Each part's CPU milliseconds per message between two readings of `cpu()` (the
    parts running at both)."""
    return {part: round((after[part] - before[part]) * 1000 / messages, 2) for part in after if part in before}


def bench_ordered_scenario(
    *, rooms: int, messages_per_room: int, out: Path, quick: bool,
    owners_running: Callable[[], AbstractContextManager[dict[str, int]]], paced_rate: float | None = None,
    enqueue_batch: int = 1, cpu: Callable[[], dict[str, float]] = dict,
) -> dict[str, Any]:
    """Run the unordered baseline, the naive fix and ordered delivery (inside
    `owners_running()`, which starts the shard owners); write the results.

    Needs the platform's URL in CARILLON_BENCH_SANDBOX_URL and a worker on the default
    queue (ordered_scenario provides both). Returns a JSON-able summary.
    """
    chat = ChatPlatform(os.environ.get(SANDBOX_URL_VARIABLE) or settings.ROOMS_CHAT_API_URL)
    timeout = 120.0 if quick else 3600.0
    phases = [
        bench_direct(chat, name="unordered", rooms=rooms, messages_per_room=messages_per_room, pause_ms=0,
                     timeout=timeout, cpu=cpu),
        bench_direct(chat, name="naive fixed pause", rooms=min(rooms, NAIVE_ROOMS),
                     messages_per_room=messages_per_room, pause_ms=NAIVE_PAUSE_MS, timeout=timeout),
    ]
    unordered = phases[0]
    with owners_running() as owners:
        # --quick: one room's acks late in the burst (the others' come in 100 ± 30 ms, and a
        # short run would otherwise never have an ack to wait for). Not in the paced
        # steps: its timeouts alone would fail every one of them, and the quick run would
        # never go through a rate that holds.
        ordered = bench_ordered(chat, rooms=rooms, messages_per_room=messages_per_room, timeout=timeout,
                                batch=enqueue_batch, cpu=cpu, late_room=quick)

        def ordered_at(rate: float, seconds: float) -> dict[str, Any]:
            paced_rooms = max(1, min(rooms, int(rate * seconds) // messages_per_room))
            phase = bench_ordered(chat, rooms=paced_rooms, messages_per_room=messages_per_room, timeout=timeout,
                                  rate=rate, batch=enqueue_batch, cpu=cpu)
            phase["rate"] = rate
            phase["not_held"] = _not_held(phase, rate)
            return phase

        if paced_rate:  # compare runs at the same load: one phase, about a minute
            paced = [ordered_at(paced_rate, 60)]
        else:
            start = max(1.0, ordered["messages_per_second"] / 2)
            paced = _rate_search(lambda rate: ordered_at(rate, STEP_SECONDS), start, steps=2 if quick else STEPS_MAX)
    sustained = max((phase for phase in paced if phase["not_held"] is None), key=lambda phase: phase["rate"],
                    default=None)
    # The overhead at the sustained rate (or the gentlest tried, when none held).
    measured = sustained or min(paced, key=lambda phase: phase["rate"])
    phases += [ordered, *paced]
    summary: dict[str, Any] = {
        "scenario": "ordered",
        "quick": quick,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "system": platform.platform(),
                    "load_average": os.getloadavg()},
        "database": str(settings.DATABASES["default"]["ENGINE"]).rsplit(".", 1)[-1],
        "platform_knobs": _knobs(),
        "results": [{k: v for k, v in phase.items() if not k.startswith("_")} for phase in phases],
        "ordered_overhead_beyond_previous_ack_ms": measured["overhead_beyond_previous_ack_ms"],
        "ordered_enqueue_to_provider_idle_room_ms": measured["enqueue_to_provider_idle_room_ms"],
        "ordered_vs_unordered_throughput": round(
            ordered["messages_per_second"] / unordered["messages_per_second"], 2),
        **_against_unordered(sustained, unordered),
        # With --kill-every: how many shard owners were SIGKILLed during the ordered phases.
        **owners,
    }
    out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    files = []
    for phase in phases:
        for kind, histogram in phase["_histograms"].items():
            name = f"ordered-{stamp}-{re.sub(r'[^a-z0-9]+', '-', phase['name']).strip('-')}-{kind}.hgrm"
            histogram_write_hgrm(histogram, out / name)
            files.append(name)
    # Two plots: every phase's enqueue -> provider (what a user waits, ordered or not),
    # and what ordering itself adds in the ordered phases.
    plots = {
        "enqueue-to-provider": ({phase["name"]: phase["_histograms"]["enqueue-to-provider"] for phase in phases},
                                "enqueue → provider accepted"),
        "overhead": ({phase["name"]: phase["_histograms"]["overhead"] for phase in (ordered, *paced)},
                     "overhead beyond the previous ack"),
    }
    for kind, (series, what) in plots.items():
        name = f"ordered-{stamp}-{kind}.png"
        percentile_plot(series, title=f"ordered, {rooms:,} rooms: {what}", path=out / name, y=f"{what} (ms, log)")
        files.append(name)
    summary["files"] = files
    (out / f"ordered-{stamp}.json").write_text(json.dumps(summary, indent=2))
    return summary


def summary_lines(summary: dict[str, Any]) -> Iterator[str]:
    """The summary as a few lines for a terminal."""
    for row in summary["results"]:
        latency = row.get("overhead_beyond_previous_ack_ms") or row["enqueue_to_provider_ms"]
        measure = "overhead beyond the previous ack" if "overhead_beyond_previous_ack_ms" in row else \
            "enqueue to provider"
        # An ack that came after its timeout ended its message all the same: a phase that
        # times out more messages than the platform lost acks for went faster than its
        # acks could follow.
        timeouts = (f"; timed out {row['timeouts']} (acks lost {row['platform']['acks_lost']})"
                    if "timeouts" in row else "")
        yield (f"{row['name']:<28} {row['messages']:>7} msgs in {row['seconds']:>8.2f}s = "
               f"{row['messages_per_second']:>8.1f}/s; violations at the API "
               f"{row['platform']['order_violations']}, at the device {row['platform']['delivery_order_violations']}; "
               f"{measure} ms p50 {latency['p50']} p99 {latency['p99']} p99.9 {latency['p99.9']}{timeouts}")
    for row in summary["results"]:
        if "rate" in row:
            verdict = f"at {row['rate']:.0f}/s: " + (f"not held: {row['not_held']}" if row["not_held"] else "held")
        elif row["name"] == "unordered":
            verdict = "unordered"
        else:
            continue
        # Parts that used next to no CPU in the phase (the baselines' worker, idle in an
        # ordered one) are not listed; the total counts them.
        cpu = row["cpu_ms_per_message"]
        listed = sorted(((part, ms) for part, ms in cpu.items() if ms >= 0.05), key=lambda item: -item[1])
        yield (f"  {verdict}; CPU {sum(cpu.values()):.2f} ms a message: "
               + ", ".join(f"{part} {ms}" for part, ms in listed))
    ordered = next(row for row in summary["results"] if row["name"] == "ordered")
    late = ordered["timeouts"] - ordered["platform"]["acks_lost"]
    caveat = (f" ({late} of the {ordered['messages']} ordered messages ended by their timeout while their ack was "
              "on its way: a burst, not a sustained rate)" if late > ordered["messages"] * LATE_MAX else "")
    yield f"ordered (burst) / unordered throughput: {summary['ordered_vs_unordered_throughput']}{caveat}"
    sustained = summary["ordered_sustained_messages_per_second"]
    yield (f"ordered sustained: {sustained}/s, / unordered: {summary['ordered_sustained_vs_unordered_throughput']}; "
           f"CPU a message, unordered / ordered at that rate: {summary['unordered_vs_ordered_sustained_cpu']}"
           if sustained else "ordered sustained: none of the rates tried held")


def _against_unordered(sustained: dict[str, Any] | None, unordered: dict[str, Any]) -> dict[str, float | None]:
    """The sustained rate (the highest held; None: none of those tried) against the
    unordered baseline, in messages a second and in CPU a message: where both paths use
    all the machine's cores, the CPU ratio is the throughput ratio the machine allows."""
    if sustained is None:
        return dict.fromkeys(("ordered_sustained_messages_per_second", "ordered_sustained_vs_unordered_throughput",
                              "unordered_vs_ordered_sustained_cpu"))
    spent = sum(sustained["cpu_ms_per_message"].values())
    return {
        "ordered_sustained_messages_per_second": round(sustained["rate"], 1),
        "ordered_sustained_vs_unordered_throughput": round(sustained["rate"] / unordered["messages_per_second"], 2),
        "unordered_vs_ordered_sustained_cpu": round(sum(unordered["cpu_ms_per_message"].values()) / spent, 2)
        if spent else None,  # a run given no way to read the CPU (`cpu` left out)
    }


def _not_held(phase: dict[str, Any], rate: float) -> str | None:
    """Why a phase at `rate` did not hold it; None if it did."""
    due = phase["messages"] / rate
    if phase["enqueue_seconds"] > due * 1.05 + 0.5:
        return f"the producer fell behind (enqueued in {phase['enqueue_seconds']} s, due in {due:.1f} s)"
    late = phase["timeouts"] - phase["platform"]["acks_lost"]
    if late > phase["messages"] * LATE_MAX:
        return f"{late} of {phase['messages']} messages ended by their timeout while their ack was on its way"
    overhead = phase["overhead_beyond_previous_ack_ms"].get("p99", 0)
    if overhead > OVERHEAD_P99_MAX_MS:
        return f"overhead beyond the previous ack p99 {overhead:.0f} ms, over {OVERHEAD_P99_MAX_MS} ms"
    violations = phase["platform"]["order_violations"] + phase["platform"]["delivery_order_violations"]
    if violations or phase["sent_before_predecessor_ended"]:
        return f"order broken ({violations} violations at the platform)"
    return None


def _rate_search(run_at: Callable[[float], dict[str, Any]], start: float, *, steps: int) -> list[dict[str, Any]]:
    """Phases at rates from `start`: up by RATE_STEP while each holds, until one does not;
    down while none has held, until one does; at most `steps`."""
    phases: list[dict[str, Any]] = []
    rate = start
    while len(phases) < steps:
        phase = run_at(rate)
        phases.append(phase)
        held = phase["not_held"] is None
        if len(phases) > 1 and held != (phases[0]["not_held"] is None):
            break  # the edge, from either side
        rate = rate * RATE_STEP if held else rate / RATE_STEP
    return phases


def ordered_scenario(options: Options) -> list[dict[str, Any]]:
    """`manage.py bench ordered`: start a sandbox, a daphne (the webhooks), a worker for
    the baselines and, for the ordered phases, two shard owners, inside the run the
    command isolated (its own virtual host, database and Redis), then measure.
    `--connections` is the number of live rooms (default 25,000)."""
    from config.celery import ping

    rooms, messages_per_room = (20, 3) if options.quick else (options.connections or DEFAULT_ROOMS, 2)
    concurrency = options.servers or DEFAULT_WORKERS
    sandbox_port, smtp_port, web_port = free_port(), free_port(), free_port()
    sandbox_url, web_url = f"http://127.0.0.1:{sandbox_port}", f"http://127.0.0.1:{web_port}"
    env = {"ROOMS_CHAT_API_URL": sandbox_url, "CARILLON_PUBLIC_URL": web_url, SANDBOX_URL_VARIABLE: sandbox_url}
    os.environ.update(env)
    processes: list[ManagedProcess] = []
    running: dict[str, list[ManagedProcess]] = {}  # the parts of the path this run started

    def cpu() -> dict[str, float]:
        """CPU seconds used so far by each part of the ordered path on this machine: the
        processes this run started, RabbitMQ and PostgreSQL when they run here, and this
        process, whose threads enqueue (an owner SIGKILLed takes its seconds with it)."""
        used = {part: cpu_seconds([member.process.pid for member in members if member.process.poll() is None])
                for part, members in running.items()}
        used.update({part: cpu_seconds([pid]) for part, pid in services.items()})
        used["enqueue (this process)"] = time.process_time()
        return used

    def owner_start(index: int) -> ManagedProcess:
        owner = ManagedProcess(f"rooms-owner-{index}", python("manage.py", "rooms_owner"), env=env, log_dir=LOG_DIR)
        owner.wait_for_log("consuming the shard queues")
        return owner

    def owners_kill(owners: list[ManagedProcess], stop: threading.Event, every: float) -> None:
        """SIGKILL the oldest owner alive (holding its share of the shards) every so
        often, and start a new one in its place, which the others hand shards to."""
        while not stop.wait(every):
            active = next(owner for owner in owners if owner.process.poll() is None)
            active.kill()
            owners.append(owner_start(len(owners)))

    @contextmanager
    def owners_running() -> Iterator[dict[str, int]]:
        """Two owners sharing the shards; with --kill-every, the oldest killed every so often."""
        owners = [owner_start(0), owner_start(1)]
        running["shard owners"] = owners
        counts: dict[str, int] = {}
        stop = threading.Event()
        killer = threading.Thread(target=owners_kill, args=(owners, stop, options.kill_every or 0), daemon=True)
        if options.kill_every:
            killer.start()
        try:
            yield counts
        finally:
            stop.set()
            if killer.is_alive():
                killer.join()
            processes_stop(owners)
            if options.kill_every:
                counts["owners_killed"] = len(owners) - 2

    try:
        processes.append(ManagedProcess(
            "sandbox", python("-m", "sandbox", "--http-port", str(sandbox_port), "--smtp-port", str(smtp_port),
                              "--log-level", "WARNING"), env=env, log_dir=LOG_DIR))
        processes[-1].wait_until(lambda: _answers(f"{sandbox_url}/healthz"), "sandbox /healthz")
        running["sandbox (the platform)"] = [processes[-1]]
        processes.append(ManagedProcess("daphne", python("-m", "daphne", "-b", "127.0.0.1", "-p", str(web_port),
                                                         "config.asgi:application"), env=env, log_dir=LOG_DIR))
        processes[-1].wait_until(lambda: _answers(f"{web_url}/healthz"), "daphne /healthz")
        running["daphne (the webhooks)"] = [processes[-1]]
        services = _services_here()
        # The baselines' sends.
        processes.append(ManagedProcess("worker", python(
            "-m", "celery", "-A", "config.celery", "worker", "--loglevel", "WARNING", "--queues",
            "carillon.default", "--concurrency", str(concurrency), "--include", "benchmarks.baseline_tasks",
            "--without-mingle", "--without-gossip",
        ), env=env, log_dir=LOG_DIR))
        ping.apply_async(queue="carillon.default").get(timeout=120)  # a worker is up
        running["worker (the baselines' sends)"] = [processes[-1]]
        summary = bench_ordered_scenario(rooms=rooms, messages_per_room=messages_per_room, out=options.out,
                                         quick=options.quick, owners_running=owners_running,
                                         paced_rate=options.rate, enqueue_batch=options.enqueue_batch, cpu=cpu)
    finally:
        processes_stop(processes)
    for line in summary_lines(summary):
        print(line)  # noqa: T201 - the command's terminal output
    return []  # written above in its own format (ordered-*.json, an .hgrm per histogram, two plots)


def _services_here() -> dict[str, int]:
    """RabbitMQ's and PostgreSQL's server processes, those running on this machine (each
    found by the port it listens on; PostgreSQL's sessions are its children)."""
    from kombu.utils.url import url_to_parts

    services = {}
    broker = url_to_parts(str(settings.CELERY_BROKER_URL).split(";")[0])
    ports = {"RabbitMQ": (broker.hostname, broker.port or 5672)}
    database = settings.DATABASES["default"]
    if connection.vendor == "postgresql":
        ports["PostgreSQL"] = (str(database["HOST"]), int(str(database["PORT"] or 5432)))
    for part, (host, port) in ports.items():
        pid = listener_pid(port) if host in ("127.0.0.1", "localhost", "::1", "") else None
        if pid is not None:
            services[part] = pid
    return services


def _answers(url: str) -> bool:
    try:
        return requests.get(url, timeout=10).status_code == 200
    except requests.RequestException:
        return False
