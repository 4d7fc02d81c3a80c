"""A lean WebSocket client on asyncio.Protocol, for tens of thousands of connections.

aiohttp's client costs ~20 µs of CPU and tens of KiB per connection; the load generators
share two cores with the server under test, so every microsecond they spend is taken from
it. This client does only what the benchmark needs: the upgrade handshake, unfragmented and
fragmented text frames, answering pings, closing. It is not a general-purpose client.
"""

import asyncio
import base64
import os
import struct
from collections.abc import Callable

# Clients must mask their frames (RFC 6455 §5.3) to defeat proxy cache poisoning, which
# cannot happen on loopback; an all-zero key keeps the payload as is and costs nothing.
_ZERO_MASK = b"\x00\x00\x00\x00"


def _frame(opcode: int, payload: bytes) -> bytes:
    length = len(payload)
    if length < 126:
        header = struct.pack("!BB", 0x80 | opcode, 0x80 | length)
    elif length < 65536:
        header = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, length)
    else:
        header = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, length)
    return header + _ZERO_MASK + payload


class WebSocketClient(asyncio.Protocol):
    """One connection; `on_message(bytes)` is called for each text or binary message."""

    def __init__(self, *, host: str, path: str, origin: str, on_message: Callable[[bytes], None]) -> None:
        self.request = (
            f"GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {base64.b64encode(os.urandom(16)).decode()}\r\n"
            f"Sec-WebSocket-Version: 13\r\nOrigin: {origin}\r\n\r\n"
        ).encode()
        self.on_message = on_message
        self.opened: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._fragments = bytearray()
        self._upgraded = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # a TCP connection's transport
        transport.write(self.request)  # type: ignore[attr-defined]

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.opened.done():
            self.opened.set_exception(ConnectionError(f"closed during the handshake ({exc})"))
        if not self.closed.done():
            self.closed.set_result(None)

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        if not self._upgraded:
            end = self._buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            status = bytes(self._buffer[: self._buffer.find(b"\r\n")])
            del self._buffer[: end + 4]
            if b" 101 " not in status:
                self.opened.set_exception(ConnectionError(f"upgrade refused: {status.decode(errors='replace')}"))
                self.close()
                return
            self._upgraded = True
            self.opened.set_result(None)
        self._parse()

    def _parse(self) -> None:
        buffer = self._buffer
        while len(buffer) >= 2:
            first, second = buffer[0], buffer[1]
            length, start = second & 0x7F, 2
            if length == 126:
                if len(buffer) < 4:
                    return
                length, start = int.from_bytes(buffer[2:4], "big"), 4
            elif length == 127:
                if len(buffer) < 10:
                    return
                length, start = int.from_bytes(buffer[2:10], "big"), 10
            if len(buffer) < start + length:
                return
            payload = bytes(buffer[start : start + length])
            del buffer[: start + length]
            opcode, final = first & 0x0F, first & 0x80
            if opcode in (0x0, 0x1, 0x2):
                if not final:
                    self._fragments += payload
                    continue
                if self._fragments:
                    payload, self._fragments = bytes(self._fragments) + payload, bytearray()
                self.on_message(payload)
            elif opcode == 0x9 and self.transport is not None:
                self.transport.write(_frame(0xA, payload))  # pong, or the server drops us
            elif opcode == 0x8:
                self.close()
                return

    def send_text(self, text: str) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(_frame(0x1, text.encode()))

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(_frame(0x8, struct.pack("!H", 1000)))
            self.transport.close()


async def ws_connect(
    *, host: str, port: int, path: str, on_message: Callable[[bytes], None], source: str = "127.0.0.1",
) -> WebSocketClient:
    """Open a connection from `source` (one of 127.0.0.x) and finish the handshake."""
    loop = asyncio.get_running_loop()
    _, client = await loop.create_connection(
        lambda: WebSocketClient(host=f"{host}:{port}", path=path, origin=f"http://{host}:{port}",
                                on_message=on_message),
        host, port, local_addr=(source, 0),
    )
    await client.opened
    return client
