"""`realtime`: realtime_publish → WebSocket and SSE client receipt, beside a raw Redis
pub/sub round trip, at fixed rates (a grid of sizes and rates by default).

Each load generator process publishes its share of the schedule and holds the receiving
connections too, so send and receipt are timed on one clock. Connection k subscribes to
its own topic `room:bench-k`; request i goes to connection i mod C.
"""

import asyncio
import json
import time
from dataclasses import dataclass
from typing import Any

import aiohttp

from benchmarks.clients import (
    Recorder,
    carillon_sse_subscribe,
    carillon_ws_subscribe,
    redis_subscribe,
    stamped,
)
from benchmarks.loadgen import Link, open_loop, run_load, schedule, source_address, source_base
from benchmarks.runner import LOG_DIR, Options, Series, ratio, report_write
from benchmarks.scenarios.common import bench_token, redis_pid, redis_url
from benchmarks.servers import daphne_start

SERIES = {"ws": "Carillon WebSocket", "sse": "Carillon SSE", "redis": "raw Redis pub/sub"}
# Publishes in flight per load generator. redis-py's asyncio pool holds 100 connections and
# raises past that instead of waiting, so an unbounded burst turns into errors: past this
# bound a publish waits in the generator, and its latency, counted from its due time, shows it.
IN_FLIGHT = 64


@dataclass(frozen=True)
class Preset:
    label: str
    size: int
    rate: float
    connections: int


# Sizes and rates around the goal rate (1k messages/s).
PRESETS = [
    Preset("1 KB at 1k per s", 1024, 1000, 1),
    Preset("256 B at 3k per s", 256, 3000, 1),
    Preset("1 KB at 3k per s", 1024, 3000, 1),
    Preset("5 KB at 2k per s", 5120, 2000, 1),
    Preset("1 KB at 20k per s over 25 connections", 1024, 20000, 25),
    Preset("1 MB at 100 per s", 1_048_576, 100, 1),
]
QUICK = Preset("1 KB at 200 per s (quick)", 1024, 200, 2)


def realtime_loadgen(config: dict[str, Any], link: Link) -> None:
    import django
    from django.conf import settings

    django.setup()
    # The grid measures messages past what Carillon accepts (1 MB) to show what they would
    # cost: this publisher alone lifts the limit.
    settings.REALTIME_MAX_MESSAGE_BYTES = max(settings.REALTIME_MAX_MESSAGE_BYTES, 2 * config["size"])
    asyncio.run(_realtime_loadgen(config, link))


async def _realtime_loadgen(config: dict[str, Any], link: Link) -> None:
    from realtime.services import arealtime_publish, async_client

    kind, first, count = config["kind"], config["first"], config["connections"]
    recorder: Recorder | None = None

    def on_body(body: dict[str, Any]) -> None:
        if recorder is not None:
            recorder.on_received(body)

    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
    holders: list[Any] = []
    topics = [f"room:bench-{first + k}" for k in range(count)]
    channels = [f"bench:raw:{first + k}" for k in range(count)]
    for k in range(count):
        if kind == "ws":
            holders.append(await carillon_ws_subscribe(host="127.0.0.1", port=config["port"], token=config["token"],
                                                       topic=topics[k], source=source_address(config["source"] + first + k),
                                                       on_body=on_body))
        elif kind == "sse":
            holders.append(await carillon_sse_subscribe(session=session, base_url=f"http://127.0.0.1:{config['port']}",
                                                        token=config["token"], topic=topics[k], on_body=on_body))
        else:
            holders.append(await redis_subscribe(url=config["redis_url"], channel=channels[k], on_body=on_body))
    publisher = async_client()
    link.ready()
    window = link.wait_start()
    recorder = Recorder(window)
    tasks: set[asyncio.Task[Any]] = set()
    gate = asyncio.Semaphore(IN_FLIGHT)

    async def publish(target: int, due: float) -> None:
        async with gate:
            body = stamped(due=due, size=config["size"])
            if kind == "redis":
                await publisher.publish(channels[target], json.dumps({"type": "message", "data": body}))
            else:
                await arealtime_publish(topic=topics[target], event="bench", data=body)

    def fire(number: int, due: float) -> None:
        task: asyncio.Task[Any] = asyncio.create_task(publish(number % count, due))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        task.add_done_callback(recorder.on_error)
        recorder.on_sent(due)
        link.count(recorder.received)

    await open_loop(schedule(rate=config["rate"], window=window, index=link.index, count=config["loadgens"]), fire)
    # Drain: what is still in flight gets until the coordinator's drain ends.
    while recorder.received < recorder.sent and time.time() < window.end + 2.5:
        link.count(recorder.received)
        await asyncio.sleep(0.05)
    link.done(recorder.result())
    for holder in holders:
        if isinstance(holder, asyncio.Task):
            holder.cancel()
        else:
            holder.close()
    await session.close()


def realtime_scenario(options: Options) -> list[dict[str, Any]]:
    """Run each preset (or the one the options describe) for WS, SSE and raw Redis."""
    if options.rate or options.size or options.connections:
        presets = [Preset(f"{options.size or 1024} B at {options.rate or 1000:g} per s over "
                          f"{options.connections or 1} connections", options.size or 1024,
                          options.rate or 1000, options.connections or 1)]
    else:
        presets = [QUICK] if options.quick else PRESETS
    loadgens = options.loadgens or 1
    token = bench_token()
    summaries = []
    daphne, port = daphne_start(name="daphne-realtime", log_dir=LOG_DIR)
    try:
        for preset in presets:
            series = []
            for kind in ("ws", "sse", "redis"):
                per, extra = divmod(preset.connections, loadgens)
                configs: list[dict[str, Any]] = []
                source = source_base(preset.connections)
                first = 0
                for index in range(min(loadgens, preset.connections)):
                    connections = per + (1 if index < extra else 0)
                    configs.append({"kind": kind, "port": port, "token": token, "redis_url": redis_url(),
                                    "first": first, "connections": connections, "size": preset.size,
                                    "rate": preset.rate, "loadgens": 1, "source": source})
                    first += connections
                for config in configs:
                    config["loadgens"] = len(configs)
                pids = [redis_pid()] if kind == "redis" else [daphne.process.pid, redis_pid()]
                results, server = run_load(realtime_loadgen, configs, label=f"{preset.label}: {SERIES[kind]}",
                                           warmup=options.warmup, duration=options.duration, server_pids=pids)
                series.append(Series.merged(SERIES[kind], results, asked_rate=preset.rate,
                                            seconds=options.duration, server=server))
            p99 = {s.name: s.latency.get_value_at_percentile(99) for s in series}
            summaries.append(report_write(
                out=options.out, scenario="realtime", label=preset.label, series=series,
                config={"size": preset.size, "rate": preset.rate, "connections": preset.connections,
                        "loadgens": loadgens, "duration": options.duration, "warmup": options.warmup},
                ratios={
                    "ws_p99_vs_redis": ratio(p99["Carillon WebSocket"], p99["raw Redis pub/sub"]),
                    "sse_p99_vs_redis": ratio(p99["Carillon SSE"], p99["raw Redis pub/sub"]),
                },
            ))
    finally:
        daphne.stop()
    return summaries
