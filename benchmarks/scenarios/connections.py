"""`connections`: ramp idle, subscribed connections up to the limit; memory per connection.

Clients connect on an open-loop schedule (`--rate` connections per second), each subscribing
to its own user topic's room (`room:idle-k`), from receiver processes of ≤ 19,000 connections
and 127.0.0.x source addresses past 25,000. The latency recorded is connect + subscribe
from each connection's due time. RSS of the server processes is read before the ramp and
while every connection is still held; the difference over the connections held is the cost
of one. Carillon's daphne (and with `--uvicorn` the same application under uvicorn) beside the
bare `websockets` server.
"""

import asyncio
import math
import time
from typing import Any

from benchmarks.clients import bare_ws_subscribe, carillon_ws_subscribe
from benchmarks.hdr import histogram_encode, histogram_new, histogram_record
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
from benchmarks.scenarios.common import bench_token, redis_url
from benchmarks.servers import rss_kib, servers_start
from core.processes import processes_stop

# daphne and the bare server get the same hard limit of 20,000 descriptors as every
# process here; the rest (≤ 200) go to the listener, the Redis pool (≤ 100), logs and
# the interpreter.
DEFAULT_PER_SERVER = 19_800
DEFAULT_RATE = 1_000.0


def connections_loadgen(config: dict[str, Any], link: Link) -> None:
    fd_limit_raise()
    asyncio.run(_ramp(config, link))


async def _ramp(config: dict[str, Any], link: Link) -> None:
    link.ready()
    window = link.wait_start()
    latency = histogram_new()
    clients: list[Any] = []
    held_per_port: dict[int, int] = {}
    errors: list[str] = []
    tasks: set[asyncio.Task[Any]] = set()
    ports = config["ports"]

    async def connect(index: int, due: float) -> None:
        try:
            port = ports[index % len(ports)]
            if config["system"] == "carillon":
                client = await carillon_ws_subscribe(host="127.0.0.1", port=port, token=config["token"],
                                                     topic="room:idle", source=source_address(config["source"] + index),
                                                     on_body=lambda body: None)
            else:
                client = await bare_ws_subscribe(host="127.0.0.1", port=port, source=source_address(config["source"] + index),
                                                 on_body=lambda body: None)
        except (OSError, RuntimeError, TimeoutError) as exc:  # the limit: refused, reset, timed out
            errors.append(repr(exc))
            return
        clients.append(client)
        held_per_port[port] = held_per_port.get(port, 0) + 1
        histogram_record(latency, time.time() - due)
        link.count(len(clients))

    def fire(number: int, due: float) -> None:
        if number >= config["total"]:
            return
        task = asyncio.create_task(connect(number, due))
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    plan = [(i, due) for i, due in schedule(rate=config["rate"], window=window, index=link.index,
                                            count=config["loadgens"])]
    await open_loop(plan, fire)
    # Connections still in their handshake get the time the kernel and server take.
    if tasks:
        await asyncio.wait(tasks, timeout=120)
    # Hold every connection until the coordinator has read the servers' memory.
    await asyncio.get_running_loop().run_in_executor(None, link.hold)
    link.done({"latency": histogram_encode(latency), "service": "", "sent": len([p for p in plan
               if p[0] < config["total"]]), "received": len(clients), "errors": len(errors),
               "first_error": errors[0] if errors else None, "held_per_port": held_per_port})
    for client in clients:
        client.close()


def connections_scenario(options: Options) -> list[dict[str, Any]]:
    servers = options.servers or 1
    total = options.connections or (200 if options.quick else DEFAULT_PER_SERVER * servers)
    rate = options.rate or (200.0 if options.quick else DEFAULT_RATE)
    loadgens = max(options.loadgens or 1, math.ceil(total / MAX_CONNECTIONS_PER_PROCESS))
    ramp = total / rate
    token = bench_token()
    series = []
    for kind in ("daphne", *(["uvicorn"] if options.uvicorn else []), "bare"):
        system = "bare" if kind == "bare" else "carillon"
        name = f"Carillon /ws/ ({kind})" if system == "carillon" else "bare websockets server"
        processes, ports = servers_start(kind, count=servers, scenario="connections", redis_url=redis_url(),
                                         channel="bench:idle", log_dir=LOG_DIR)
        try:
            pids = [p.process.pid for p in processes]
            idle = {pid: rss_kib([pid]) for pid in pids}
            source = source_base(total)
            configs = [{"system": system, "ports": ports, "token": token, "rate": rate, "total": total,
                        "loadgens": loadgens, "source": source} for _ in range(loadgens)]
            held_rss: dict[int, int] = {}
            # The ramp is the measured window; the servers' RSS is read once every client
            # process has finished connecting and still holds its connections.
            results, server = run_load(connections_loadgen, configs, label=f"connections {total:,}: {name}",
                                       warmup=0.0, duration=ramp, drain=2.0, server_pids=pids,
                                       on_held=lambda: held_rss.update({pid: rss_kib([pid]) for pid in pids}))  # noqa: B023 - called before the loop moves on
            held = sum(r["received"] for r in results)
            per_process = {pid: held_rss[pid] - idle[pid] for pid in pids}
            # Each server's own count and cost: "up to its 20,000 descriptors" is per process.
            held_by_server = [sum(r["held_per_port"].get(port, 0) for r in results) for port in ports]
            item = Series.merged(name, results, asked_rate=rate, seconds=ramp, server=server,
                                 connections_held=held, server_processes=servers,
                                 rss_idle_kib=sum(idle.values()), rss_held_kib=sum(held_rss.values()),
                                 kib_per_connection=round(sum(per_process.values()) / held, 1) if held else None,
                                 connections_per_server=held_by_server,
                                 kib_per_connection_per_server=[
                                     round(per_process[pid] / count, 1) if count else None
                                     for pid, count in zip(pids, held_by_server, strict=True)],
                                 first_error=next((r["first_error"] for r in results if r["first_error"]), None))
            series.append(item)
        finally:
            processes_stop(processes)
    carillon, bare = series[0], series[-1]
    ratios = {"carillon_kib_per_connection_vs_bare": ratio(carillon.extra["kib_per_connection"],
                                                            bare.extra["kib_per_connection"])}
    if options.uvicorn:
        ratios["carillon_uvicorn_kib_per_connection_vs_bare"] = ratio(series[1].extra["kib_per_connection"],
                                                                       bare.extra["kib_per_connection"])
    return [report_write(
        out=options.out, scenario="connections", label=f"{total} connections over {servers} server processes",
        series=series,
        config={"connections": total, "rate": rate, "server_processes": servers, "loadgens": loadgens},
        ratios=ratios,
    )]
