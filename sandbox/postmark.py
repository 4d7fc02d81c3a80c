"""Postmark's email API: /email (one message) and /email/batch (up to 500), JSON both ways.

A request carries the server token in X-Postmark-Server-Token (401 without the right one).
/email/batch answers 200 with one result per message, in order, even when some were
refused: each has its ErrorCode (0 taken, 300 an invalid message, 406 an inactive
recipient) and, when taken, its MessageID. A request Postmark cannot read, or with too
many messages, is refused whole (422), as is one past the rate limit (429). Addresses at
inactive.example.com stand for recipients Postmark has marked inactive (a hard bounce).
Taken messages land in the same mailbox as SMTP's ("email"), one per Message-ID header.
"""

import logging
import time
import uuid
from typing import Any

from aiohttp import web

from sandbox.store import STORE_KEY, Inbox, Store

logger = logging.getLogger(__name__)

SERVER_TOKEN_KEY = web.AppKey("postmark_server_token", str)
MAX_BATCH_MESSAGES = 500
INACTIVE_DOMAIN = "inactive.example.com"


def _error(status: int, code: int, message: str, **headers: str) -> web.Response:
    return web.json_response({"ErrorCode": code, "Message": message}, status=status, headers=headers)


def _header(message: dict[str, Any], name: str) -> str | None:
    for header in message.get("Headers") or []:
        if isinstance(header, dict) and str(header.get("Name", "")).lower() == name.lower():
            return str(header.get("Value"))
    return None


def _take(store: Store, inbox: Inbox, message: Any) -> dict[str, Any]:
    """One message's result, as Postmark answers it; taken ones are recorded."""
    if not isinstance(message, dict) or not message.get("From") or not message.get("To"):
        return {"ErrorCode": 300, "Message": "Invalid email request: From and To are required."}
    if not (message.get("TextBody") or message.get("HtmlBody")):
        return {"ErrorCode": 300, "Message": "Invalid email request: provide either email TextBody or HtmlBody or both."}
    to = str(message["To"])
    if to.rsplit("@", 1)[-1].rstrip(">").lower() == INACTIVE_DOMAIN:
        inbox.rejected += 1
        return {"ErrorCode": 406, "Message": f"You tried to send to recipient(s) that have been marked as inactive. Found inactive addresses: {to}."}
    message_id = _header(message, "Message-ID")
    # A resend has the same MessageID, as it is the same message to the mailbox.
    postmark_id = str(uuid.uuid5(uuid.NAMESPACE_URL, message_id)) if message_id else str(uuid.uuid4())
    result = {"To": to, "SubmittedAt": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "MessageID": postmark_id,
              "ErrorCode": 0, "Message": "OK"}
    if not store.mailbox_shows(message_id):
        return result
    store.record("email", {
        "message_id": message_id,
        "rcpt_to": [to],
        "from": message["From"],
        "to": to,
        "subject": message.get("Subject"),
        "text": message.get("TextBody"),
        "html": message.get("HtmlBody"),
        "headers": {str(h.get("Name")): str(h.get("Value")) for h in message.get("Headers") or [] if isinstance(h, dict)},
        "via": "postmark",
        "postmark_id": postmark_id,
        "stream": message.get("MessageStream", "outbound"),
        "metadata": message.get("Metadata") or {},
    })
    return result


async def _send(request: web.Request, *, batch: bool) -> web.Response:
    store = request.app[STORE_KEY]
    inbox = store.inbox("email")
    inbox.in_flight += 1
    try:
        await inbox.knobs.delay()
        if request.headers.get("X-Postmark-Server-Token") != request.app[SERVER_TOKEN_KEY]:
            return _error(401, 10, "The Server Token you provided in the X-Postmark-Server-Token request header was invalid.")
        retry_after = inbox.admit()
        if retry_after is not None:
            return _error(429, 429, "Rate limit exceeded, please slow down.", **{"Retry-After": str(retry_after)})
        if inbox.knobs.should_fail():
            status = inbox.knobs.error_status if 500 <= inbox.knobs.error_status < 600 else 500
            return _error(status, 0, "Sandbox failure (knob error_status)")
        try:
            body = await request.json()
        except ValueError:
            return _error(422, 402, "Received invalid JSON input.")
        if batch:
            if not isinstance(body, list):
                return _error(422, 403, "Incompatible JSON input: /email/batch takes an array of messages.")
            if len(body) > MAX_BATCH_MESSAGES:
                return _error(422, 410, f"Too many batch messages: at most {MAX_BATCH_MESSAGES}, not {len(body)}.")
            inbox.requests += 1
            return web.json_response([_take(store, inbox, message) for message in body])
        result = _take(store, inbox, body)
        inbox.requests += 1
        if result["ErrorCode"]:
            return web.json_response(result, status=422)
        return web.json_response(result)
    finally:
        inbox.in_flight -= 1


async def send_one(request: web.Request) -> web.Response:
    return await _send(request, batch=False)


async def send_batch(request: web.Request) -> web.Response:
    return await _send(request, batch=True)


def add_routes(app: web.Application, *, server_token: str) -> None:
    app[SERVER_TOKEN_KEY] = server_token
    app.router.add_post("/email", send_one)
    app.router.add_post("/email/batch", send_batch)
