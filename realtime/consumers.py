"""The WebSocket endpoint `/ws/`: JSON frames, subscriptions per topic, resume by id.

Client frames: `{"type": "subscribe", "topic": "room:lobby", "last_id": 12}` (last_id
optional), `{"type": "unsubscribe", "topic": ...}`, `{"type": "ping"}`.
Server frames: `message` {topic, id, event, data}, `subscribed` {topic, id},
`unsubscribed` {topic}, `resync` {topic, id}, `error` {reason, code, topic?}, `pong`,
`heartbeat`. Close codes: see docs/realtime.md and the constants below.
"""

import asyncio
import functools
import logging
from typing import Any
from urllib.parse import parse_qs

from channels.consumer import get_handler_name
from channels.db import aclose_old_connections
from channels.generic.websocket import AsyncWebsocketConsumer
from django.conf import settings

from core.errors import DATABASE_UNREACHABLE
from core.parsers import json_loads
from core.parsing import MAX_ID
from realtime.auth import websocket_session_user
from realtime.connections import (
    MAX_TOPICS_PER_CONNECTION,
    connection_user_id,
    frame_offer,
    transport_backlog,
)
from realtime.exceptions import InvalidFrame, InvalidToken, RealtimeError
from realtime.frames import Control, Frame
from realtime.hub import Hub, get_hub
from realtime.subscriptions import Subscription
from realtime.topics import Topic, topic_authorise, topic_parse

logger = logging.getLogger(__name__)

CLOSE_BAD_FRAME = 4400
CLOSE_BAD_TOKEN = 4401
CLOSE_NOT_FOUND = 4404
CLOSE_SLOW_CONSUMER = 4408
# HTTP's 503 in the application's range: the WebSocket server may send only 1000 or 3000-4999.
CLOSE_UNAVAILABLE = 4503
MAX_FRAME_BYTES = 4096


def command_parse(text: str | None, data: bytes | None) -> dict[str, Any]:
    """Decode one client frame; raise InvalidFrame for anything outside the schema."""
    if text is None or len(text) > MAX_FRAME_BYTES:
        raise InvalidFrame("frames are JSON text of at most 4096 characters")
    try:
        command = json_loads(text)
    except ValueError as exc:
        raise InvalidFrame("frame is not JSON") from exc
    if not isinstance(command, dict) or command.get("type") not in {
        "subscribe",
        "unsubscribe",
        "ping",
    }:
        raise InvalidFrame("frame must be an object whose type is subscribe, unsubscribe or ping")
    last_id = command.get("last_id")
    # A JSON number, not a string: the same bound as ids read from text (core.parsing).
    if last_id is not None and (type(last_id) is not int or not 0 <= last_id <= MAX_ID):
        raise InvalidFrame(f"last_id must be an integer from 0 to {MAX_ID}, or absent")
    if command["type"] != "ping" and not isinstance(command.get("topic"), str):
        raise InvalidFrame(f"{command['type']} needs a topic string")
    return command


class RealtimeConsumer(AsyncWebsocketConsumer):
    """One browser connection. Fan-out reaches it through the process hub, not a group."""

    # An alias with no layer configured: joining the Channels layer would cost a Redis
    # subscription and a receive task per connection, and fan-out does not use it.
    channel_layer_alias = "realtime-no-layer"

    user_id: int | None
    hub: Hub
    released = True  # nothing to release until connect attaches to the hub

    async def dispatch(self, message: dict[str, Any]) -> None:
        """Channels closes stale database connections before every message it dispatches,
        a hop to its database thread and back per client frame (21 % of daphne's CPU during
        a connection ramp, py-spy). Only the connect touches the database here (who is
        connecting), so only the connect pays for it."""
        if message["type"] == "websocket.connect":
            await aclose_old_connections()
        handler = getattr(self, get_handler_name(message), None)
        if handler is None:
            raise ValueError(f"No handler for message type {message['type']}")
        await handler(message)

    async def connect(self) -> None:
        self.subscriptions: dict[Topic, Subscription] = {}
        self.closing = False
        self.outgoing: asyncio.Queue[Frame] = asyncio.Queue(settings.REALTIME_CONNECTION_BUFFER)
        token = parse_qs(self.scope.get("query_string", b"").decode()).get("token", [None])[0]
        await self.accept()
        try:
            self.user_id = await connection_user_id(
                session_user=functools.partial(websocket_session_user, self.scope), token=token
            )
        except InvalidToken as exc:
            logger.info("websocket refused: %s", exc)
            self.closing = True
            await self.close(code=CLOSE_BAD_TOKEN, reason=str(exc)[:120])
            return
        except DATABASE_UNREACHABLE as exc:
            # Who is connecting cannot be read just now (the database down or restarting):
            # a refusal the client retries after a moment, not an internal error (1011).
            logger.warning("websocket refused: database unreachable: %s", exc)
            self.closing = True
            await self.close(code=CLOSE_UNAVAILABLE, reason="database unreachable: reconnect in a few seconds")
            return
        self.writer = asyncio.create_task(self._write_loop())
        self.hub = get_hub()
        self.hub.attach(self, self.user_id)
        self.released = False

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        # daphne cancels an application that is still busy 10 s after its client left
        # (a connect stuck behind an overloaded database or Redis): `disconnect` never runs
        # then, and without this the hub would keep the subscriptions and the user present.
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self._release()

    async def disconnect(self, code: int) -> None:
        await self._release()

    async def _release(self) -> None:
        """Leave the hub once, however the connection ended."""
        self.closing = True
        if self.released:
            return
        self.released = True
        self.writer.cancel()
        subscriptions, self.subscriptions = list(self.subscriptions.values()), {}
        await self.hub.release(self, subscriptions)

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        if self.closing:
            return
        try:
            command = command_parse(text_data, bytes_data)
        except InvalidFrame as exc:
            logger.info("websocket closed for a bad frame: %s", exc)
            await self._close(CLOSE_BAD_FRAME, str(exc))
            return
        if command["type"] == "ping":
            self.offer(Control("pong", {}))
        elif command["type"] == "subscribe":
            await self._subscribe(command["topic"], command.get("last_id"))
        else:
            await self._unsubscribe(command["topic"])

    async def _subscribe(self, name: str, last_id: int | None) -> None:
        try:
            topic = topic_parse(name)
            topic_authorise(topic=topic, user_id=self.user_id)
            if (
                len(self.subscriptions) >= MAX_TOPICS_PER_CONNECTION
                and topic not in self.subscriptions
            ):
                raise InvalidFrame(f"at most {MAX_TOPICS_PER_CONNECTION} topics per connection")
        except RealtimeError as exc:
            self.offer(Control("error", {"code": exc.code, "reason": str(exc), "topic": name[:80]}))
            return
        if topic in self.subscriptions:
            await self.hub.unsubscribe(self.subscriptions.pop(topic))
        self.subscriptions[topic] = self.hub.subscribe(self, topic, last_id)

    async def _unsubscribe(self, name: str) -> None:
        try:
            topic = topic_parse(name)
        except RealtimeError as exc:
            self.offer(Control("error", {"code": exc.code, "reason": str(exc), "topic": name[:80]}))
            return
        subscription = self.subscriptions.pop(topic, None)
        if subscription is not None:
            await self.hub.unsubscribe(subscription)
        self.offer(Control("unsubscribed", {"topic": str(topic)}))

    # --- outgoing ----------------------------------------------------------------------

    def offer(self, frame: Frame) -> None:
        """Queue a frame without waiting; a full queue means the client is too slow."""
        if self.closing:
            return
        if not frame_offer(self.outgoing, frame):
            logger.warning(
                "websocket of user %s too slow (%d frames queued): closing",
                self.user_id,
                self.outgoing.qsize(),
            )
            asyncio.create_task(self._close(CLOSE_SLOW_CONSUMER, "slow consumer: buffer full"))

    async def put(self, frame: Frame) -> None:
        if not self.closing:
            await self.outgoing.put(frame)

    async def _write_loop(self) -> None:
        backlog = transport_backlog(self.scope)
        while True:
            frame = await self.outgoing.get()
            # While the client does not read, frames wait in the bounded queue (which
            # closes it with 4408 when full) rather than piling up in daphne's transport.
            await backlog.drained()
            await self.send(text_data=frame.ws_text)

    async def _close(self, code: int, reason: str) -> None:
        if self.closing:
            return
        self.closing = True
        if hasattr(self, "writer"):
            self.writer.cancel()
        await self.close(code=code, reason=reason[:120])


class NoSuchEndpointConsumer(AsyncWebsocketConsumer):
    """Any WebSocket path but `/ws/`: accepted, then closed with 4404 and where to go.

    Accept-then-close rather than refusing the handshake: a refused handshake reaches a
    browser as a bare 403 from daphne (the origin check's answer too), a close code says
    what was wrong.
    """

    channel_layer_alias = "realtime-no-layer"

    async def connect(self) -> None:
        await self.accept()
        await self.close(code=CLOSE_NOT_FOUND, reason="no WebSocket endpoint here: use /ws/")
