"""Clients of the load generators: they receive messages stamped with their due and send
times and record latency (from the due time) and service time (from the send time)."""

import asyncio
import json
import time
from collections.abc import Callable
from typing import Any

import aiohttp
import redis.asyncio as aioredis

from benchmarks.hdr import histogram_encode, histogram_new, histogram_record
from benchmarks.loadgen import Window
from benchmarks.wsclient import WebSocketClient, ws_connect


def stamped(*, due: float, size: int) -> dict[str, Any]:
    """A message body of about `size` bytes once encoded, led by its due and send times."""
    return {"due": due, "sent": time.time(), "pad": "x" * max(0, size - 48)}


class Recorder:
    """Latency and service-time histograms of the messages due in the measured window."""

    def __init__(self, window: Window) -> None:
        self.window = window
        self.latency, self.service = histogram_new(), histogram_new()
        self.sent = self.received = self.errors = 0
        # Receipts inside the window whatever their due time: the work a server did in it.
        self.received_in_window = 0

    def on_sent(self, due: float) -> None:
        if self.window.measured(due):
            self.sent += 1

    def on_received(self, body: dict[str, Any]) -> None:
        now = time.time()
        if self.window.measure_from <= now < self.window.end:
            self.received_in_window += 1
        due = body["due"]
        if self.window.measured(due):
            self.received += 1
            histogram_record(self.latency, now - due)
            histogram_record(self.service, now - body["sent"])

    def on_error(self, task: "asyncio.Task[Any]") -> None:
        if not task.cancelled() and task.exception() is not None:
            self.errors += 1

    def result(self, **extra: Any) -> dict[str, Any]:
        return {
            "latency": histogram_encode(self.latency),
            "service": histogram_encode(self.service),
            "sent": self.sent,
            "received": self.received,
            "errors": self.errors,
            "received_in_window": self.received_in_window,
            **extra,
        }


async def carillon_ws_subscribe(
    *, host: str, port: int, token: str, topic: str, source: str, on_body: Callable[[dict[str, Any]], None],
) -> WebSocketClient:
    """A /ws/ connection subscribed to `topic` (returns once the server says it is live)."""
    subscribed = asyncio.get_running_loop().create_future()

    def on_message(payload: bytes) -> None:
        frame = json.loads(payload)
        kind = frame.get("type")
        if kind == "message":
            on_body(frame["data"])
        elif kind == "subscribed" and not subscribed.done():
            subscribed.set_result(None)
        elif kind == "error" and not subscribed.done():
            subscribed.set_exception(RuntimeError(f"subscription refused: {frame}"))

    client = await ws_connect(host=host, port=port, path=f"/ws/?token={token}", on_message=on_message,
                              source=source)
    client.send_text(json.dumps({"type": "subscribe", "topic": topic}))
    await asyncio.wait_for(subscribed, 60)
    return client


async def bare_ws_subscribe(
    *, host: str, port: int, source: str, on_body: Callable[[dict[str, Any]], None],
) -> WebSocketClient:
    """A connection to the bare broadcast server (it says `subscribed` on connect)."""
    subscribed = asyncio.get_running_loop().create_future()

    def on_message(payload: bytes) -> None:
        frame = json.loads(payload)
        if frame.get("type") == "message":
            on_body(frame["data"])
        elif not subscribed.done():
            subscribed.set_result(None)

    client = await ws_connect(host=host, port=port, path="/ws/", on_message=on_message, source=source)
    await asyncio.wait_for(subscribed, 60)
    return client


async def carillon_sse_subscribe(
    *, session: aiohttp.ClientSession, base_url: str, token: str, topic: str,
    on_body: Callable[[dict[str, Any]], None],
) -> "asyncio.Task[None]":
    """An /events/ stream of `topic`, read by a task (returned once the stream is live)."""
    subscribed = asyncio.get_running_loop().create_future()

    async def read() -> None:
        async with session.get(f"{base_url}/events/", params={"topic": topic, "token": token}) as response:
            response.raise_for_status()
            buffer = b""
            # Split events by hand: aiohttp's readline refuses lines past 64 KiB (1 MB messages).
            async for chunk in response.content.iter_any():
                buffer += chunk
                while (end := buffer.find(b"\n\n")) >= 0:
                    event, buffer = buffer[:end], buffer[end + 2 :]
                    name, data = "", b""
                    for line in event.split(b"\n"):
                        if line.startswith(b"event: "):
                            name = line[7:].decode()
                        elif line.startswith(b"data: "):
                            data = line[6:]
                    if name == "subscribed" and not subscribed.done():
                        subscribed.set_result(None)
                    elif name == "bench":
                        on_body(json.loads(data)["data"])

    task = asyncio.create_task(read())
    def ended(task: "asyncio.Task[None]") -> None:
        if not subscribed.done():
            why = "cancelled" if task.cancelled() else task.exception()
            subscribed.set_exception(RuntimeError(f"SSE stream ended before it was live: {why}"))

    task.add_done_callback(ended)
    await asyncio.wait_for(subscribed, 60)
    return task


async def redis_subscribe(
    *, url: str, channel: str, on_body: Callable[[dict[str, Any]], None],
) -> "asyncio.Task[None]":
    """A raw Redis pub/sub subscription read by a task: the realtime baseline's receiving end."""
    pubsub = aioredis.Redis.from_url(url).pubsub()
    await pubsub.subscribe(channel)

    async def read() -> None:
        async for message in pubsub.listen():
            if message["type"] == "message":
                on_body(json.loads(message["data"])["data"])

    return asyncio.create_task(read())
