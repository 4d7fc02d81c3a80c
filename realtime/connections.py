"""What WebSocket and SSE connections share: who is connecting, and the resume ids."""

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from django.contrib.auth import get_user_model

from core.parsing import id_parse
from realtime.auth import realtime_token_user_id
from realtime.exceptions import InvalidFrame, InvalidToken
from realtime.frames import Frame
from realtime.topics import Topic, topic_parse

logger = logging.getLogger(__name__)

MAX_TOPICS_PER_CONNECTION = 100


async def connection_user_id(*, session_user: Callable[[], Awaitable[Any]], token: str | None) -> int | None:
    """The user a connection acts for: a token wins over the session (read only without a
    token); None when anonymous. Both read the database: its errors reach the caller."""
    if token is not None:
        user_id = realtime_token_user_id(token)
        if not await get_user_model().objects.filter(pk=user_id, is_active=True).aexists():
            raise InvalidToken("the token's user no longer exists or is inactive")
        return user_id
    user = await session_user()
    if user.is_authenticated:
        return int(user.pk)
    return None


def resume_ids_parse(value: str) -> dict[Topic, int]:
    """Parse an SSE id, `room:lobby=12,user:3=40`, into the last id per topic."""
    ids: dict[Topic, int] = {}
    if not value.strip():
        return ids
    for part in value.split(",")[:MAX_TOPICS_PER_CONNECTION]:
        name, sep, number = part.strip().rpartition("=")
        try:
            if not sep:
                raise ValueError("no '='")
            ids[topic_parse(name)] = id_parse(number)
        except ValueError as exc:
            raise InvalidFrame(
                f"bad resume id {part[:80]!r}: use topic=id pairs joined by commas (room:lobby=12)"
            ) from exc
    return ids


def resume_ids_format(ids: dict[Topic, int]) -> str:
    """The SSE id of a stream: every topic's position, `room:lobby=12,user:3=40`."""
    return ",".join(f"{topic}={last}" for topic, last in ids.items())


# A connection's writer waits while more than this is unsent in the server's transport:
# Twisted's own mark for pausing a producer (FileDescriptor.bufferSize).
TRANSPORT_HIGH_WATER_BYTES = 64 * 1024
TRANSPORT_POLL_SECONDS = 0.05
TRANSPORT_BACKLOG_SCOPE_KEY = "carillon.transport_backlog"


class TransportBacklog:
    """How many bytes the server took from one connection and has not yet written to its
    socket.

    daphne's ASGI `send` returns at once and Twisted keeps whatever the socket does not
    take: a client that stops reading would make the server hold everything published to
    it. daphne hands each application `partial(server.handle_reply, protocol)`, whose
    protocol (WebSocket or HTTP request) has the Twisted transport; its unsent bytes are
    what Twisted itself compares with its buffer size. Under a server whose `send` waits
    for the socket, or one this cannot see into, the backlog reads 0 and the queue bound
    alone applies.
    """

    def __init__(self, send: Any) -> None:
        protocol = send.args[0] if isinstance(send, functools.partial) and send.args else None
        self._transport = getattr(protocol, "transport", None)

    def __call__(self) -> int:
        transport = self._transport
        if transport is None:
            return 0
        # twisted.internet.abstract.FileDescriptor: dataBuffer[offset:] + _tempDataBuffer.
        unsent = len(getattr(transport, "dataBuffer", b"")) - getattr(transport, "offset", 0)
        return unsent + getattr(transport, "_tempDataLen", 0)

    async def drained(self, give_up: Callable[[], bool] = lambda: False) -> None:
        """Wait until the transport is under its high-water mark (or `give_up()`): the
        back-pressure daphne's `send` does not give, so a stalled client's frames stay in
        its bounded queue, where overflowing closes it as a slow consumer."""
        while self() > TRANSPORT_HIGH_WATER_BYTES and not give_up():
            await asyncio.sleep(TRANSPORT_POLL_SECONDS)


class TransportBacklogMiddleware:
    """Put the connection's TransportBacklog in its scope (WebSocket consumers and the SSE
    view see the scope, not daphne's `send`)."""

    def __init__(self, application: Any) -> None:
        self.application = application

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> Any:
        scope = {**scope, TRANSPORT_BACKLOG_SCOPE_KEY: TransportBacklog(send)}
        return await self.application(scope, receive, send)


def transport_backlog(scope: dict[str, Any]) -> TransportBacklog:
    """The connection's backlog; one that reads 0 outside TransportBacklogMiddleware."""
    backlog = scope.get(TRANSPORT_BACKLOG_SCOPE_KEY)
    return backlog if isinstance(backlog, TransportBacklog) else TransportBacklog(None)


def frame_offer(outgoing: "asyncio.Queue[Frame]", frame: Frame) -> bool:
    """Queue a frame on a connection's bounded buffer without waiting; False when it is full
    (a slow consumer)."""
    try:
        outgoing.put_nowait(frame)
    except asyncio.QueueFull:
        return False
    return True
