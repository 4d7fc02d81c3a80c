"""`fanout`: one topic, N subscribed connections, R publishes per second.

Carillon's /ws/ under daphne beside a bare `websockets` server that `broadcast()`s one
Redis subscription (benchmarks/bare_server.py). One publisher process sends on the open-loop
schedule; receiver processes hold the connections (≤ 19,000 each, from 127.0.0.x source
addresses past 25,000) and record each delivery's latency from its publish's due time.
Server processes hold ≤ 19,000 connections each too: N = 50,000 runs three of them.
"""

import asyncio
import json
import math
import time
from typing import Any

from benchmarks.clients import Recorder, bare_ws_subscribe, carillon_ws_subscribe, stamped
from benchmarks.loadgen import (
    MAX_CONNECTIONS_PER_PROCESS,
    Link,
    fd_limit_raise,
    open_loop,
    run_load,
    schedule,
    source_address,
    source_base,
)
from benchmarks.runner import LOG_DIR, Options, Series, ratio, report_write
from benchmarks.scenarios.common import bench_token, redis_pid, redis_url
from benchmarks.servers import rss_kib, servers_start
from core.processes import processes_stop

TOPIC = "room:fanout"
BARE_CHANNEL = "bench:fanout"
COUNTS = [1_000, 10_000, 50_000]
# Deliveries asked per second when no --rate is given: R = this / N publishes per second.
# The receivers share the two cores with the server: more would measure them, not it.
DELIVERIES_PER_SECOND = 10_000
CONNECT_CONCURRENCY = 200
SIZE = 100


def fanout_loadgen(config: dict[str, Any], link: Link) -> None:
    if config["role"] == "publish":
        import django

        django.setup()
    fd_limit_raise()
    asyncio.run(_publish(config, link) if config["role"] == "publish" else _receive(config, link))


async def _publish(config: dict[str, Any], link: Link) -> None:
    from realtime.services import arealtime_publish, async_client

    client = async_client()
    await client.ping()
    link.ready()
    window = link.wait_start()
    recorder = Recorder(window)
    tasks: set[asyncio.Task[Any]] = set()

    def fire(number: int, due: float) -> None:
        body = stamped(due=due, size=SIZE)
        coroutine: Any
        if config["system"] == "carillon":
            coroutine = arealtime_publish(topic=TOPIC, event="bench", data=body)
        else:
            coroutine = client.publish(BARE_CHANNEL, json.dumps({"type": "message", "data": body}))
        task = asyncio.create_task(coroutine)
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        task.add_done_callback(recorder.on_error)
        recorder.on_sent(due)

    await open_loop(schedule(rate=config["rate"], window=window), fire)
    await asyncio.gather(*tasks, return_exceptions=True)
    link.done({"latency": "", "service": "", "sent": recorder.sent, "errors": recorder.errors})


async def _receive(config: dict[str, Any], link: Link) -> None:
    recorder: Recorder | None = None

    def on_body(body: dict[str, Any]) -> None:
        if recorder is not None:
            recorder.on_received(body)

    gate = asyncio.Semaphore(CONNECT_CONCURRENCY)
    ports = config["ports"]

    async def connect(index: int) -> Any:
        async with gate:
            port = ports[index % len(ports)]
            if config["system"] == "carillon":
                return await carillon_ws_subscribe(host="127.0.0.1", port=port, token=config["token"], topic=TOPIC,
                                                   source=source_address(config["source"] + index), on_body=on_body)
            return await bare_ws_subscribe(host="127.0.0.1", port=port, source=source_address(config["source"] + index),
                                           on_body=on_body)

    outcomes = await asyncio.gather(*(connect(i) for i in range(config["first"], config["last"])),
                                    return_exceptions=True)
    clients = [c for c in outcomes if not isinstance(c, BaseException)]
    failed = [c for c in outcomes if isinstance(c, BaseException)]
    link.ready()
    window = link.wait_start()
    recorder = Recorder(window)
    while time.time() < window.end + 2.5:
        link.count(recorder.received)
        await asyncio.sleep(0.2)
    link.done(recorder.result(connected=len(clients), connect_errors=len(failed),
                              connect_error=repr(failed[0]) if failed else None))
    for client in clients:
        client.close()


def fanout_scenario(options: Options) -> list[dict[str, Any]]:
    counts = [options.connections] if options.connections else [50] if options.quick else COUNTS
    token = bench_token()
    summaries = []
    for count in counts:
        rate = options.rate or max(0.2, DELIVERIES_PER_SECOND / count)
        servers = options.servers or math.ceil(count / MAX_CONNECTIONS_PER_PROCESS)
        receivers = max(options.loadgens or 1, math.ceil(count / MAX_CONNECTIONS_PER_PROCESS))
        series = []
        for kind in ("daphne", *(["uvicorn"] if options.uvicorn else []), "bare"):
            system = "bare" if kind == "bare" else "carillon"
            name = f"Carillon /ws/ ({kind})" if system == "carillon" else "bare websockets broadcast"
            processes, ports = servers_start(kind, count=servers, scenario="fanout", redis_url=redis_url(),
                                             channel=BARE_CHANNEL, log_dir=LOG_DIR)
            try:
                pids = [p.process.pid for p in processes]
                rss_idle = rss_kib(pids)
                configs: list[dict[str, Any]] = [{"role": "publish", "system": system, "rate": rate}]
                per, source = math.ceil(count / receivers), source_base(count)
                for index in range(receivers):
                    configs.append({"role": "receive", "system": system, "ports": ports, "token": token,
                                    "first": index * per, "last": min(count, (index + 1) * per),
                                    "source": source})
                results, server = run_load(fanout_loadgen, configs, label=f"fanout {count:,}: {name}",
                                           warmup=options.warmup, duration=options.duration, server_pids=pids)
                connected = sum(r.get("connected", 0) for r in results[1:])
                item = Series.merged(name, results, asked_rate=rate, seconds=options.duration, server=server,
                                     connections=connected,
                                     connect_errors=sum(r.get("connect_errors", 0) for r in results[1:]),
                                     connect_error=next((r["connect_error"] for r in results[1:]
                                                         if r.get("connect_error")), None),
                                     kib_per_connection=round((server["rss_kib"] - rss_idle) / connected, 1)
                                     if connected else None)
                item.extra["deliveries_expected"] = item.sent * connected
                item.extra["deliveries_missing"] = item.sent * connected - item.received
                series.append(item)
            finally:
                processes_stop(processes)
        carillon, bare = series[0], series[-1]
        ratios = {
            "carillon_deliveries_per_cpu_second_vs_bare": ratio(
                carillon.summary()["received_per_server_cpu_second"], bare.summary()["received_per_server_cpu_second"]),
            "carillon_p99_vs_bare": ratio(carillon.latency.get_value_at_percentile(99),
                                          bare.latency.get_value_at_percentile(99)),
        }
        if options.uvicorn:
            ratios["carillon_uvicorn_deliveries_per_cpu_second_vs_bare"] = ratio(
                series[1].summary()["received_per_server_cpu_second"], bare.summary()["received_per_server_cpu_second"])
        summaries.append(report_write(
            out=options.out, scenario="fanout", label=f"{count} connections at {rate:g} publishes per s",
            series=series,
            config={"connections": count, "rate": rate, "size": SIZE, "server_processes": servers,
                    "receiver_processes": receivers, "duration": options.duration, "warmup": options.warmup,
                    "redis_pid": redis_pid()},
            ratios=ratios,
        ))
    return summaries
