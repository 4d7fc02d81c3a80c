"""A chat platform's messaging API (WhatsApp-like): queue a message, acknowledge it later
by a signed webhook.

`POST /chat/v1/messages` takes JSON `{"room", "body", "idempotency_key", "callback_url",
"sequence"}` and answers 201 `{"id", "room", "status": "queued", "duplicate"}`. A repeated
idempotency key is not delivered again: it answers the first message's id (200) and acks
it again, as idempotent APIs do. After a latency drawn from `callback_distribution` (uniform
`callback_delay_ms` ± `callback_jitter_ms`, normal, or exponential; a room's own mean
through `PUT /api/chat/rooms/{room}`),
the platform POSTs `{"type": "message.delivered", "id", "room", "idempotency_key"}` to
`callback_url`, with `X-Chat-Timestamp: <unix seconds>` and `X-Chat-Signature:
sha256=<hex HMAC-SHA256 of "<timestamp>." followed by the body>` (the timestamp is signed
so that a receiver can refuse a captured ack replayed later); `callback_loss_rate` of
acks are never sent.

Per room it records the order in which messages arrived: a first arrival whose
`sequence` is lower than one already seen is an order violation; a repeated idempotency
key is a duplicate. It also models what the recipient sees: each message reaches the
device when its ack is due (lost ack or not), so a message sent before the previous one
reached the device can overtake it (`delivery_order_violations`: what a user of the chat sees out of order).
`GET /api/chat/rooms` exposes all three; `?summary=1` leaves out the per-room detail.

`GET /chat/v1/messages?idempotency_key=K` answers the message the platform holds under
that key (200, as `POST` does) or 404: a sender that lost track of a send (its process
died during the call) asks before sending again, so that it neither loses nor repeats it.
"""

import asyncio
import hashlib
import hmac
import json
import logging
import random
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import ClientTimeout, web

from sandbox.store import HTTP_KEY, STORE_KEY

logger = logging.getLogger(__name__)

MESSAGES_PATH = "/chat/v1/messages"
SIGNATURE_HEADER = "X-Chat-Signature"
TIMESTAMP_HEADER = "X-Chat-Timestamp"


def chat_signature(secret: str, body: bytes, timestamp: int) -> str:
    """Sign a webhook: `sha256=` and the hex HMAC-SHA256, keyed by the shared secret, of
    the timestamp, a dot, and the body."""
    signed = str(timestamp).encode() + b"." + body
    return "sha256=" + hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()


def chat_signed_headers(secret: str, body: bytes, timestamp: int | None = None) -> dict[str, str]:
    """The headers of a signed webhook sent now (or at `timestamp`, unix seconds)."""
    timestamp = int(time.time()) if timestamp is None else timestamp
    return {TIMESTAMP_HEADER: str(timestamp), SIGNATURE_HEADER: chat_signature(secret, body, timestamp)}


@dataclass
class ChatRoom:
    """What arrived in one room, in arrival order."""

    arrivals: list[int | None] = field(default_factory=list)  # sequence of each first arrival
    order_violations: int = 0
    duplicates: int = 0
    # When each message reaches the recipient's device (its ack's delay after arrival,
    # whether or not the ack itself is then lost), by sequence: a message that reaches
    # the device before an earlier one is what the user sees out of order.
    deliveries: list[tuple[int, float]] = field(default_factory=list)
    delivery_order_violations: int = 0
    callback_delay_ms: float | None = None  # overrides the provider-wide knob

    def summary(self) -> dict[str, Any]:
        return {
            "arrivals": self.arrivals,
            "order_violations": self.order_violations,
            "delivery_order_violations": self.delivery_order_violations,
            "duplicates": self.duplicates,
            "callback_delay_ms": self.callback_delay_ms,
        }


@dataclass
class ChatState:
    secret: str
    rooms: dict[str, ChatRoom] = field(default_factory=dict)
    by_key: dict[str, dict[str, Any]] = field(default_factory=dict)
    tasks: set[asyncio.Task[None]] = field(default_factory=set)
    acks_sent: int = 0
    acks_lost: int = 0
    next_id: int = 1

    def clear(self) -> None:
        for task in self.tasks:  # acks still pending belong to the run being forgotten
            task.cancel()
        self.rooms.clear()
        self.by_key.clear()
        self.acks_sent = self.acks_lost = 0


STATE_KEY = web.AppKey("chat_state", ChatState)


def _error(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"error": code, "message": message}, status=status)


async def create_message(request: web.Request) -> web.Response:
    """POST /chat/v1/messages: queue a message; ack it later by webhook."""
    state = request.app[STATE_KEY]
    inbox = request.app[STORE_KEY].inbox("chat")
    try:
        payload = await request.json()
    except ValueError:
        inbox.rejected += 1
        return _error(400, "invalid_json", "send a JSON object")
    room_name, body = payload.get("room"), payload.get("body")
    if not room_name or body is None:
        inbox.rejected += 1
        return _error(400, "invalid_message", "room and body are required")
    retry_after = inbox.admit()
    if retry_after is not None:
        response = _error(429, "rate_limited", "too many requests")
        response.headers["Retry-After"] = str(retry_after)
        return response
    if inbox.knobs.should_fail():
        inbox.rejected += 1
        return _error(inbox.knobs.error_status, "unavailable", "sandbox failure (knob)")
    room = state.rooms.setdefault(str(room_name), ChatRoom())
    key = payload.get("idempotency_key")
    if key and key in state.by_key:
        message = state.by_key[key]
        room.duplicates += 1
        inbox.duplicates += 1
        _schedule_ack(request.app, message, inbox.knobs.callback_delay(room.callback_delay_ms))
        await inbox.knobs.delay()
        return web.json_response({**_resource(message), "duplicate": True}, status=200)
    sequence = payload.get("sequence")
    sequence = int(sequence) if sequence is not None else None
    if sequence is not None and any(seen is not None and seen > sequence for seen in room.arrivals):
        room.order_violations += 1
    room.arrivals.append(sequence)
    message = {
        "id": f"chm_{state.next_id}",
        "room": str(room_name),
        "body": str(body),
        "idempotency_key": key,
        "sequence": sequence,
        "callback_url": payload.get("callback_url"),
    }
    state.next_id += 1
    if key:
        state.by_key[key] = message
    request.app[STORE_KEY].record("chat", message)
    delay_ms = inbox.knobs.callback_delay(room.callback_delay_ms)
    if sequence is not None:
        delivered_at = time.monotonic() + delay_ms / 1000
        if any(seen < sequence and at > delivered_at for seen, at in room.deliveries):
            room.delivery_order_violations += 1
        room.deliveries.append((sequence, delivered_at))
    _schedule_ack(request.app, message, delay_ms)
    # The latency knob delays the answer, not the acceptance: a client that dies while
    # waiting has still handed the message over, as with a real platform.
    await inbox.knobs.delay()
    return web.json_response({**_resource(message), "duplicate": False}, status=201)


async def find_message(request: web.Request) -> web.Response:
    """GET /chat/v1/messages?idempotency_key=K: the message held under a key, or 404."""
    key = request.query.get("idempotency_key")
    if not key:
        return _error(400, "invalid_query", "name the message by ?idempotency_key=")
    message = request.app[STATE_KEY].by_key.get(key)
    if message is None:
        return _error(404, "not_found", f"no message with idempotency key {key}")
    return web.json_response(_resource(message))


def _resource(message: dict[str, Any]) -> dict[str, Any]:
    return {"id": message["id"], "room": message["room"], "status": "queued"}


def _schedule_ack(app: web.Application, message: dict[str, Any], delay_ms: float) -> None:
    if not message["callback_url"]:
        return
    knobs = app[STORE_KEY].inbox("chat").knobs
    if knobs.callback_loss_rate > 0 and random.random() < knobs.callback_loss_rate:  # noqa: S311
        app[STATE_KEY].acks_lost += 1
        return
    task = asyncio.create_task(_post_ack(app, message, delay_ms / 1000))
    app[STATE_KEY].tasks.add(task)
    task.add_done_callback(app[STATE_KEY].tasks.discard)


async def _post_ack(app: web.Application, message: dict[str, Any], delay: float) -> None:
    await asyncio.sleep(delay)
    body = json.dumps(
        {
            "type": "message.delivered",
            "id": message["id"],
            "room": message["room"],
            "idempotency_key": message["idempotency_key"],
        }
    ).encode()
    state = app[STATE_KEY]
    try:
        async with app[HTTP_KEY].post(
            message["callback_url"],
            data=body,
            headers={"Content-Type": "application/json", **chat_signed_headers(state.secret, body)},
            timeout=ClientTimeout(total=15),
        ) as response:
            message["ack_status"] = response.status
        state.acks_sent += 1
    except Exception as exc:  # noqa: BLE001 - a platform records a failed webhook and moves on
        logger.warning("chat %s ack to %s failed: %s", message["id"], message["callback_url"], exc)


async def list_rooms(request: web.Request) -> web.Response:
    """GET /api/chat/rooms: per room, arrival order, order violations and duplicates."""
    state = request.app[STATE_KEY]
    rooms = {} if request.query.get("summary") else {name: room.summary() for name, room in state.rooms.items()}
    return web.json_response(
        {
            "rooms": rooms,
            "order_violations": sum(room.order_violations for room in state.rooms.values()),
            "delivery_order_violations": sum(room.delivery_order_violations for room in state.rooms.values()),
            "duplicates": sum(room.duplicates for room in state.rooms.values()),
            "acks_sent": state.acks_sent,
            "acks_lost": state.acks_lost,
        }
    )


async def set_room(request: web.Request) -> web.Response:
    """PUT /api/chat/rooms/{room}: per-room knobs, e.g. {"callback_delay_ms": 5000}."""
    room = request.app[STATE_KEY].rooms.setdefault(request.match_info["room"], ChatRoom())
    try:
        changes = await request.json()
        delay = changes.get("callback_delay_ms")
        room.callback_delay_ms = None if delay is None else float(delay)
    except (ValueError, TypeError, AttributeError):
        return _error(400, "invalid_knobs", 'send {"callback_delay_ms": <number or null>}')
    return web.json_response(room.summary())


def add_routes(app: web.Application, *, secret: str) -> None:
    app[STATE_KEY] = ChatState(secret=secret)
    app.router.add_post(MESSAGES_PATH, create_message)
    app.router.add_get(MESSAGES_PATH, find_message)
    app.router.add_get("/api/chat/rooms", list_rooms)
    app.router.add_put("/api/chat/rooms/{room}", set_room)
