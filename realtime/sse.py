"""Server-Sent Events at `/events/?topic=...&topic=...&last_event_id=...`.

The SSE `id` is the position in every topic of the stream (`room:lobby=12,user:3=40`),
so one Last-Event-ID resumes all of them. The `Last-Event-ID` header (what EventSource
sends on reconnect) wins over the `last_event_id` query parameter (what a page can put on
its first connection, since browsers cannot set headers on EventSource).

EventSource keeps the `id` of the last event it saw, and an event with an empty `id`
erases it: so every event, from the stream's first bytes on, names the position of every
topic, including a topic that has had no message on this stream (where it stood when the
stream started; 0 for a topic with no message at all).
"""

import asyncio
import logging
from collections.abc import AsyncIterator

from django.conf import settings
from django.http import HttpRequest, StreamingHttpResponse
from django.http.response import HttpResponseBase
from django.views.decorators.http import require_GET
from redis.exceptions import RedisError

from core.errors import application_error_response, error_response
from realtime.connections import (
    MAX_TOPICS_PER_CONNECTION,
    TransportBacklog,
    connection_user_id,
    frame_offer,
    resume_ids_format,
    resume_ids_parse,
    transport_backlog,
)
from realtime.exceptions import InvalidToken, RealtimeError, TopicRefused
from realtime.frames import HEARTBEAT, Control, Delivery, Frame
from realtime.hub import get_hub
from realtime.subscriptions import Subscription
from realtime.topics import Topic, topic_authorise, topic_parse

logger = logging.getLogger(__name__)

_OVERFLOW = Control("error", {"code": "slow_consumer", "reason": "buffer full: reconnect"})


class SseConnection:
    """One EventSource: a bounded queue the hub fills and the response drains."""

    def __init__(
        self,
        resume: dict[Topic, int | None],
        user_id: int | None = None,
        backlog: TransportBacklog | None = None,
    ) -> None:
        # The ids the client resumes from (None: from now), then, once the stream starts,
        # the position in each topic that every event's id carries.
        self.resume = resume
        self.positions: dict[Topic, int] = {}
        self.user_id = user_id
        self.backlog = backlog or TransportBacklog(None)
        self.outgoing: asyncio.Queue[Frame] = asyncio.Queue(settings.REALTIME_CONNECTION_BUFFER)
        self.overflowed = False

    def offer(self, frame: Frame) -> None:
        if self.overflowed:
            return
        if not frame_offer(self.outgoing, frame):
            logger.warning("event stream too slow (%d queued): closing", self.outgoing.qsize())
            self.overflowed = True
            while not self.outgoing.empty():
                self.outgoing.get_nowait()
            self.outgoing.put_nowait(_OVERFLOW)

    async def put(self, frame: Frame) -> None:
        if not self.overflowed:
            await self.outgoing.put(frame)

    def encode(self, frame: Frame) -> str:
        if frame is HEARTBEAT:
            return ": heartbeat\n\n"
        if isinstance(frame, Delivery):
            self.positions[topic_parse(frame.message["topic"])] = frame.id
            event = frame.message["event"]
        else:
            if frame.type == "resync":
                self.positions[topic_parse(frame.fields["topic"])] = int(frame.fields["id"])  # type: ignore[call-overload]
            event = frame.type
        return (
            f"id: {resume_ids_format(self.positions)}\nevent: {event}\ndata: {frame.sse_data}\n\n"
        )

    async def stream(self) -> AsyncIterator[str]:
        hub = get_hub()
        hub.attach(self, self.user_id)
        subscriptions: list[Subscription] = []
        try:
            self.positions = await self._start_positions()
            for topic, last_id in self.positions.items():
                subscriptions.append(hub.subscribe(self, topic, last_id))
            # A first chunk at once: the client knows it is connected, proxies see bytes,
            # and EventSource takes the start positions as its last id (an event with an
            # id and no data sets it without firing), so a drop before any event resumes.
            yield (
                f"retry: {settings.REALTIME_SSE_RETRY_MS}\n"
                f"id: {resume_ids_format(self.positions)}\n: connected\n\n"
            )
            while True:
                frame = await self.outgoing.get()
                # While the client does not read, events wait in the bounded queue, whose
                # overflow ends the stream, rather than piling up in daphne's transport.
                await self.backlog.drained(give_up=lambda: self.overflowed)
                if self.overflowed and frame is not _OVERFLOW:
                    continue  # dropped with the queue: the error event is next
                yield self.encode(frame)
                if frame is _OVERFLOW:
                    return
        finally:
            # Runs when the client leaves too: Django cancels the response on disconnect.
            await hub.release(self, subscriptions)
            logger.debug("event stream closed")

    async def _start_positions(self) -> dict[Topic, int]:
        """The resume ids, and for topics resumed from now, where they stand now."""
        from_now = [topic for topic, last_id in self.resume.items() if last_id is None]
        delay = 0.1
        while True:
            try:
                latest = await get_hub().latest_ids(from_now) if from_now else {}
                break
            except RedisError as exc:
                # The client waits (EventSource gives up for good on an error answer).
                logger.warning("event stream: latest ids unreadable (%s); retrying", exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
        return {
            topic: latest[topic] if last_id is None else last_id
            for topic, last_id in self.resume.items()
        }


@require_GET
async def events(request: HttpRequest) -> HttpResponseBase:
    """Stream the requested topics; 400/401/403 with a JSON body when it cannot."""
    try:
        user_id = await connection_user_id(session_user=request.auser, token=request.GET.get("token"))
    except InvalidToken as exc:
        return application_error_response(exc)
    names = request.GET.getlist("topic")
    try:
        if not names or len(names) > MAX_TOPICS_PER_CONNECTION:
            raise RealtimeError(
                code="invalid_request",
                message=f"name 1 to {MAX_TOPICS_PER_CONNECTION} topics: /events/?topic=room:lobby&topic=user:42"
            )
        topics = [topic_parse(name) for name in names]
        resume = resume_ids_parse(
            request.headers.get("Last-Event-ID") or request.GET.get("last_event_id", "")
        )
    except RealtimeError as exc:
        return application_error_response(exc)
    try:
        for topic in topics:
            topic_authorise(topic=topic, user_id=user_id)
    except TopicRefused as exc:
        return application_error_response(exc) if user_id is not None else error_response(
            exc.code, exc.message, status=401
        )
    connection = SseConnection(
        {topic: resume.get(topic) for topic in topics}, user_id, transport_backlog(getattr(request, "scope", {}))
    )
    response = StreamingHttpResponse(connection.stream(), content_type="text/event-stream")
    response["Cache-Control"] = "no-cache"
    response["X-Accel-Buffering"] = "no"  # nginx: pass each event through at once
    return response
