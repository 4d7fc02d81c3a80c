"""Test clients for /ws/ and /events/ over real sockets (aiohttp)."""

import asyncio
import base64
import json
import os
import socket
from typing import Any

import aiohttp
import redis
from django.conf import settings

from realtime.topics import sequence_key, topic_parse

TIMEOUT = 15.0


class WsClient:
    """One WebSocket connection to a daphne, skipping heartbeats unless asked for."""

    def __init__(self, session: aiohttp.ClientSession, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.session = session
        self.ws = ws

    @classmethod
    async def connect(cls, base_url: str, token: str | None = None, cookies: dict[str, str] | None = None) -> "WsClient":
        session = aiohttp.ClientSession(cookies=cookies)
        query = f"?token={token}" if token else ""
        ws = await session.ws_connect(
            base_url.replace("http", "ws", 1) + "/ws/" + query, origin=base_url
        )
        return cls(session, ws)

    async def send(self, frame: dict[str, Any] | str) -> None:
        await self.ws.send_str(frame if isinstance(frame, str) else json.dumps(frame))

    async def frame(self, skip: tuple[str, ...] = ("heartbeat",)) -> dict[str, Any]:
        while True:
            message = await asyncio.wait_for(self.ws.receive(), TIMEOUT)
            if message.type != aiohttp.WSMsgType.TEXT:
                raise ConnectionError(f"{message.type!r} {message.data!r} {message.extra!r}")
            frame: dict[str, Any] = json.loads(message.data)
            if frame["type"] not in skip:
                return frame

    async def subscribe(self, topic: str, last_id: int | None = None) -> list[dict[str, Any]]:
        """Subscribe; return every frame up to and including `subscribed` (or an error)."""
        frame: dict[str, Any] = {"type": "subscribe", "topic": topic}
        if last_id is not None:
            frame["last_id"] = last_id
        await self.send(frame)
        frames = []
        while True:
            frames.append(await self.frame())
            if frames[-1]["type"] in ("subscribed", "error"):
                return frames

    async def close_code(self) -> int | None:
        message = await asyncio.wait_for(self.ws.receive(), TIMEOUT)
        assert message.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED), message
        return self.ws.close_code

    async def close(self) -> None:
        await self.ws.close()
        await self.session.close()


def messages(frames: list[dict[str, Any]]) -> list[tuple[str, int, Any]]:
    return [(f["topic"], f["id"], f["data"]) for f in frames if f["type"] == "message"]


async def sse_events(response: aiohttp.ClientResponse, count: int) -> list[dict[str, str]]:
    """Read `count` SSE events (comments skipped) from a streaming response."""
    events: list[dict[str, str]] = []
    event: dict[str, str] = {}
    while len(events) < count:
        line = (await asyncio.wait_for(response.content.readline(), TIMEOUT)).decode()
        if not line:
            raise ConnectionError("event stream ended")
        line = line.rstrip("\n")
        if not line:
            if "data" in event:  # not the `retry:` preamble
                events.append(event)
            event = {}
        elif not line.startswith(":"):
            field, _, value = line.partition(": ")
            event[field] = value
    return events


def latest_id(topic: str) -> int:
    """The topic's last id: user topics outlive a test (user ids repeat across passes)."""
    client = redis.Redis.from_url(settings.REALTIME_REDIS_URL)
    return int(client.get(sequence_key(topic_parse(topic))) or 0)


class EventSource:
    """/events/ read the way a browser's EventSource reads it (the HTML standard's parser):
    `last_event_id` follows the `id:` field of every event dispatched, an empty one erasing
    it, and a reconnect to the same URL sends it as Last-Event-ID when it is not empty."""

    def __init__(self, session: aiohttp.ClientSession, url: str) -> None:
        self.session = session
        self.url = url
        self.last_event_id = ""
        self._id_buffer = ""
        self.response: aiohttp.ClientResponse | None = None

    async def connect(self) -> None:
        headers = {"Last-Event-ID": self.last_event_id} if self.last_event_id else {}
        self.response = await self.session.get(
            self.url, headers=headers, timeout=aiohttp.ClientTimeout(sock_read=TIMEOUT)
        )
        assert self.response.status == 200, await self.response.text()

    def drop(self) -> None:
        assert self.response is not None
        self.response.close()

    async def dispatch(self) -> dict[str, str] | None:
        """Read up to the next blank line and dispatch: the event fired, or None when it
        had no data (the id is taken either way)."""
        assert self.response is not None
        data: list[str] = []
        kind = ""
        while True:
            raw = await asyncio.wait_for(self.response.content.readline(), TIMEOUT)
            if not raw:
                raise ConnectionError("event stream ended")
            line = raw.decode().rstrip("\n")
            if not line:
                self.last_event_id = self._id_buffer
                if not data:
                    return None
                return {"event": kind or "message", "data": "\n".join(data), "id": self.last_event_id}
            if line.startswith(":"):
                continue
            field, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if field == "id" and "\0" not in value:
                self._id_buffer = value
            elif field == "data":
                data.append(value)
            elif field == "event":
                kind = value

    async def events(self, until: str) -> list[dict[str, str]]:
        """Events fired up to and including the first of type `until`."""
        fired: list[dict[str, str]] = []
        while not fired or fired[-1]["event"] != until:
            event = await self.dispatch()
            if event is not None:
                fired.append(event)
        return fired


class RawClient:
    """A raw TCP client that reads only when told; with a small receive buffer, what a
    phone on a dead network or a frozen tab looks like to the server when it stops."""

    def __init__(self, base_url: str, request: str, receive_buffer: int | None = None) -> None:
        host, port = base_url.removeprefix("http://").split(":")
        self.sock = socket.socket()
        if receive_buffer is not None:
            # Before connect: the window the client advertises stays small.
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        self.sock.settimeout(TIMEOUT)
        self.sock.connect((host, int(port)))
        self.sock.sendall(request.replace("\n", "\r\n").encode())
        self.received = bytearray()

    def read_until(self, marker: bytes) -> bytes:
        start = 0
        while self.received.find(marker, start) < 0:
            start = max(0, len(self.received) - len(marker))
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError(f"closed before {marker!r}: {self.received[-200:]!r}")
            self.received += chunk
        return bytes(self.received)

    def read_to_end(self) -> bytes:
        """Read on until the server closes (an EOF or a reset); everything it sent."""
        try:
            while chunk := self.sock.recv(65536):
                self.received += chunk
        except ConnectionResetError:
            pass
        return bytes(self.received)

    def close(self) -> None:
        self.sock.close()


def ws_request(base_url: str, path: str) -> str:
    key = base64.b64encode(os.urandom(16)).decode()
    return (
        f"GET {path} HTTP/1.1\nHost: {base_url.removeprefix('http://')}\nUpgrade: websocket\n"
        f"Connection: Upgrade\nSec-WebSocket-Key: {key}\nSec-WebSocket-Version: 13\n"
        f"Origin: {base_url}\n\n"
    )


def ws_client_frame(text: str) -> bytes:
    """A masked text frame, as a client must send it."""
    payload, mask = text.encode(), os.urandom(4)
    assert len(payload) < 126
    return bytes([0x81, 0x80 | len(payload)]) + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def ws_server_frames(data: bytes) -> list[tuple[int, bytes]]:
    """(opcode, payload) of each whole server frame in `data` (after the handshake)."""
    frames, at = [], data.index(b"\r\n\r\n") + 4
    while at + 2 <= len(data):
        opcode, length, at = data[at] & 0x0F, data[at + 1] & 0x7F, at + 2
        if length >= 126:
            size = 2 if length == 126 else 8
            length, at = int.from_bytes(data[at : at + size], "big"), at + size
        if at + length > len(data):
            break
        frames.append((opcode, data[at : at + length]))
        at += length
    return frames
