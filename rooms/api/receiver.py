"""The chat platform's acks, received without Django's request cycle.

An ack is only forwarded: its signature checked, its body parsed, and the ack published
to the queue of the shard named in the callback URL, without a database read. Through Django's middleware and a DRF view that cost a daphne
process about 8 ms of CPU per webhook (about 125 acks a second), when daphne itself
answers an ASGI request in a fraction of a millisecond, and the acks are half of the
ordered path's requests. This ASGI wrapper answers those webhooks itself, with the same
checks, rate limit and answers as the view (`chat_webhook_answer`); every other request,
and a webhook without the owner's route, goes on to Django.
"""

import io
import logging
from collections.abc import Awaitable, Callable, MutableMapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import parse_qsl

from asgiref.sync import sync_to_async
from django.conf import settings
from django.core.handlers.asgi import ASGIRequest
from django.http import HttpResponse, JsonResponse

from core.errors import ApplicationError, application_error_response, error_response
from core.throttling import request_refusal, throttle_record
from rooms.api.views import _owner_route, chat_webhook_answer, payload_too_large
from rooms.providers import SIGNATURE_HEADER, TIMESTAMP_HEADER

logger = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
ASGIApp = Callable[..., Awaitable[None]]

PATH = "/api/webhooks/chat/"
# The blocking part (Redis for the rate limit, the confirmed publish): threads shared by
# all requests, not a thread started per request. Enough of them that, while RabbitMQ's
# confirms are slow, the acks waiting for one are published as one group (rooms.shards)
# instead of queueing for a thread: with 8, acks waited seconds in a loaded benchmark.
_pool = ThreadPoolExecutor(64, thread_name_prefix="chat-acks")


class ChatAckReceiver:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        route = None
        if scope["type"] == "http" and scope["path"] == PATH and scope["method"] == "POST":
            route = _owner_route(dict(parse_qsl(scope.get("query_string", b"").decode("latin-1"))))
        if route is None:
            await self.app(scope, receive, send)
            return
        body = await _read_body(receive, limit=settings.DATA_UPLOAD_MAX_MEMORY_SIZE)
        if body is DISCONNECTED:
            return
        if body is None:
            response: HttpResponse = application_error_response(payload_too_large())
        else:
            request = ASGIRequest(scope, io.BytesIO(body))
            response = await sync_to_async(_answer, thread_sensitive=False, executor=_pool)(request, body, route)
        await _send_response(send, response)


def _answer(request: ASGIRequest, body: bytes, route: tuple[int, int]) -> HttpResponse:
    scope = settings.CARILLON_THROTTLE_VIEWS["chat-webhook"]
    refusal = request_refusal(request, scope)
    if refusal is not None:
        return refusal
    return throttle_record(request, scope, _acked(request, body, route))


def _acked(request: ASGIRequest, body: bytes, route: tuple[int, int]) -> HttpResponse:
    try:
        status, answer = chat_webhook_answer(
            body, signature=request.headers.get(SIGNATURE_HEADER, ""),
            timestamp=request.headers.get(TIMESTAMP_HEADER, ""), route=route,
        )
    except ApplicationError as exc:
        return application_error_response(exc)
    except Exception:
        logger.exception("chat webhook failed")
        return error_response("internal_error", "an unexpected failure, logged on the server", status=500)
    return JsonResponse(answer, status=status)


DISCONNECTED = b"<disconnected>"


async def _read_body(receive: Receive, *, limit: int | None) -> bytes | None:
    """The request's body; None past `limit` bytes; DISCONNECTED if the client left."""
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return DISCONNECTED
        chunk = message.get("body", b"")
        size += len(chunk)
        if limit is not None and size > limit:
            return None
        chunks.append(chunk)
        if not message.get("more_body"):
            return b"".join(chunks)


async def _send_response(send: Send, response: HttpResponse) -> None:
    headers = [(name.encode("latin-1"), value.encode("latin-1")) for name, value in response.items()]
    await send({"type": "http.response.start", "status": response.status_code, "headers": headers})
    await send({"type": "http.response.body", "body": response.content})
