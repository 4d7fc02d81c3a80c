# ruff: noqa: S603, S607 (a developer's tool starting redis-server and our own processes)
"""Fan-out cost: deliveries per server CPU-second, N WebSocket clients on one topic.

Runs, in one go and against one Redis of its own: Carillon's /ws/ under daphne, and beside
it a bare aiohttp server that subscribes once to the same Redis channel and forwards each
message to its local WebSockets (the floor any Python server could reach here). Loopback
only, bounded in clients, messages and time. Not a test: it asserts nothing.

    .venv/bin/python benchmarks/realtime_fanout.py --clients 1000 --messages 100 --rate 20
"""

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import aiohttp
import redis
from aiohttp import web

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run as a script from anywhere: Carillon's packages import
TOPIC = "room:bench"
CHANNEL = f"carillon:rt:pub:{TOPIC}"


def free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def wait_port(port: int, timeout: float = 60) -> None:
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing listens on {port}")


# --- the bare baseline server (run as a child: python realtime_fanout.py --bare PORT URL) --


def bare_server(port: int, redis_url: str) -> None:
    import redis.asyncio as aioredis

    sockets: set[web.WebSocketResponse] = set()

    async def handler(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        sockets.add(ws)
        await ws.send_str(json.dumps({"type": "subscribed"}))
        async for _ in ws:
            pass
        sockets.discard(ws)
        return ws

    async def forward(app: web.Application) -> None:
        pubsub = aioredis.Redis.from_url(redis_url).pubsub()
        await pubsub.subscribe(CHANNEL)
        async for message in pubsub.listen():
            if message["type"] == "message":
                data = message["data"].decode()
                for ws in tuple(sockets):
                    await ws.send_str(data)

    async def start(app: web.Application) -> None:
        app["forward"] = asyncio.create_task(forward(app))

    app = web.Application()
    app.router.add_get("/ws/", handler)
    app.on_startup.append(start)
    web.run_app(app, host="127.0.0.1", port=port, print=None)


# --- clients and the measurement ---------------------------------------------------------


async def run_clients(
    url: str,
    token: str,
    clients: int,
    messages: int,
    rate: float,
    redis_url: str,
    pid: int,
    publish: Callable[[int, float], None],
) -> dict[str, float]:
    connector = aiohttp.TCPConnector(limit=0)
    session = aiohttp.ClientSession(connector=connector)
    rss_before = rss_kib(pid)
    sockets = []
    for _ in range(clients):
        ws = await session.ws_connect(
            f"{url}/ws/?token={token}", origin=url.replace("ws", "http", 1)
        )
        await ws.send_str(json.dumps({"type": "subscribe", "topic": TOPIC}))
        sockets.append(ws)
    for ws in sockets:  # every subscription live before the first publish
        while json.loads((await ws.receive(timeout=60)).data)["type"] != "subscribed":
            pass
    rss_after = rss_kib(pid)
    received = [0] * clients
    latencies: list[float] = []
    done = asyncio.Event()

    async def read(index: int, ws: aiohttp.ClientWebSocketResponse) -> None:
        async for message in ws:
            if '"heartbeat"' in message.data:
                continue
            received[index] += 1
            # Latency from the intended send time (seed 001: no coordinated omission).
            latencies.append(time.time() - float(json.loads(message.data)["data"][:17]))
            if received[index] == messages and all(r >= messages for r in received):
                done.set()

    readers = [asyncio.create_task(read(i, ws)) for i, ws in enumerate(sockets)]
    cpu_before, started, wall_start = cpu_seconds(pid), time.monotonic(), time.time()
    for n in range(messages):
        # Open loop: each publish at its scheduled time, whatever the server is doing.
        await asyncio.sleep(max(0.0, started + n / rate - time.monotonic()))
        publish(n, wall_start + n / rate)
    try:
        await asyncio.wait_for(done.wait(), timeout=120)
    except TimeoutError:
        pass
    elapsed = time.monotonic() - started
    cpu = cpu_seconds(pid) - cpu_before
    for task in readers:
        task.cancel()
    await session.close()
    deliveries = sum(min(r, messages) for r in received)
    return {
        "deliveries": deliveries,
        "expected": clients * messages,
        "server_cpu_s": round(cpu, 3),
        "wall_s": round(elapsed, 2),
        "deliveries_per_cpu_s": round(deliveries / cpu) if cpu else 0,
        "kib_per_connection": round((rss_after - rss_before) / clients, 1),
        **percentiles(latencies),
    }


def percentiles(latencies: list[float]) -> dict[str, float]:
    """Latency percentiles in ms (exact, from every sample: runs are bounded)."""
    ordered = sorted(latencies)
    if not ordered:
        return {}
    pick = lambda q: round(1000 * ordered[min(len(ordered) - 1, int(q * len(ordered)))], 1)  # noqa: E731
    return {"p50_ms": pick(0.5), "p99_ms": pick(0.99), "p99.9_ms": pick(0.999), "max_ms": pick(1.0)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--messages", type=int, default=100)
    parser.add_argument("--rate", type=float, default=20.0, help="publishes per second")
    parser.add_argument("--bare", nargs=2, metavar=("PORT", "REDIS_URL"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.bare:
        bare_server(int(args.bare[0]), args.bare[1])
        return
    if not 1 <= args.clients <= 10_000 or not 1 <= args.messages <= 10_000:
        parser.error("clients and messages are bounded to 1..10000")

    work = Path(tempfile.mkdtemp(prefix="carillon-bench-"))
    redis_port = free_port()
    subprocess.run(
        [
            "redis-server",
            "--port",
            str(redis_port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--daemonize",
            "yes",
            "--dir",
            str(work),
            "--logfile",
            str(work / "redis.log"),
        ],
        check=True,
    )
    try:
        measure(args, work, redis_port)
    finally:
        subprocess.run(["redis-cli", "-p", str(redis_port), "shutdown", "nosave"], check=False)


def measure(args: argparse.Namespace, work: Path, redis_port: int) -> None:
    redis_url = f"redis://127.0.0.1:{redis_port}/0"
    wait_port(redis_port)
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "config.settings.local",
        "DJANGO_READ_DOT_ENV_FILE": "false",
        "DATABASE_URL": f"sqlite:///{work}/bench.sqlite3",
        "REDIS_URL": redis_url,
        "REALTIME_REDIS_URL": redis_url,
        "DJANGO_LOG_LEVEL": "WARNING",
        "REALTIME_CONNECTION_BUFFER": "100000",
    }
    os.environ.update(env)
    subprocess.run(
        [sys.executable, "manage.py", "migrate", "-v", "0"], cwd=ROOT, env=env, check=True
    )
    import django

    django.setup()
    from django.contrib.auth import get_user_model

    from realtime.auth import realtime_token_create
    from realtime.services import realtime_publish

    user = get_user_model().objects.create_user("bench")
    token = realtime_token_create(user_id=user.pk)

    def payload(intended: float) -> str:
        return f"{intended:.6f}".ljust(100, "x")  # 100 bytes, led by the intended send time

    raw = redis.Redis.from_url(redis_url)
    results = {}
    processes = []
    try:
        for kind in ("daphne", "bare"):
            port = free_port()
            argv = (
                [
                    sys.executable,
                    "-m",
                    "daphne",
                    "-b",
                    "127.0.0.1",
                    "-p",
                    str(port),
                    "config.asgi:application",
                ]
                if kind == "daphne"
                else [sys.executable, __file__, "--bare", str(port), redis_url]
            )
            process = subprocess.Popen(
                argv,
                cwd=ROOT,
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=open(work / f"{kind}.log", "w"),
            )  # noqa: SIM115
            processes.append(process)
            wait_port(port)
            if kind == "daphne":

                def publish(n: int, intended: float) -> None:
                    realtime_publish(topic=TOPIC, event="bench", data=payload(intended))
            else:

                def publish(n: int, intended: float) -> None:
                    message = {"type": "message", "id": n, "data": payload(intended)}
                    raw.publish(CHANNEL, json.dumps(message))

            results[kind] = asyncio.run(
                run_clients(
                    f"ws://127.0.0.1:{port}",
                    token,
                    args.clients,
                    args.messages,
                    args.rate,
                    redis_url,
                    process.pid,
                    publish,
                )
            )
            process.terminate()
            process.wait(20)
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
    print(
        json.dumps(
            {
                "clients": args.clients,
                "messages": args.messages,
                "rate": args.rate,
                "results": results,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
