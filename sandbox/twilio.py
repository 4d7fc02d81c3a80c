"""Twilio's Programmable Messaging API (2010-04-01), with signed status callbacks.

Requests and answers follow Twilio's: form-encoded POST with HTTP basic auth
(AccountSid:AuthToken), a Message resource in JSON, Twilio's error body
({"code", "message", "more_info", "status"}), and status callbacks POSTed to
StatusCallback and signed with X-Twilio-Signature (base64 HMAC-SHA1 of the URL followed
by each sorted parameter name and value, keyed with the auth token).
"""

import asyncio
import base64
import hashlib
import hmac
import logging
import random
import secrets
from email.utils import formatdate
from typing import Any

from aiohttp import BasicAuth, ClientTimeout, hdrs, web

from sandbox.store import AUTH_TOKEN_KEY, HTTP_KEY, STORE_KEY

logger = logging.getLogger(__name__)

API_VERSION = "2010-04-01"
MESSAGES_PATH = "/2010-04-01/Accounts/{account_sid}/Messages.json"
MESSAGE_PATH = "/2010-04-01/Accounts/{account_sid}/Messages/{sid}.json"
MESSAGES_KEY = web.AppKey("twilio_messages", dict)
TASKS_KEY = web.AppKey("twilio_callback_tasks", set)


def twilio_signature(auth_token: str, url: str, params: dict[str, str]) -> str:
    """Sign a callback as Twilio does (legacy HMAC-SHA1 scheme)."""
    payload = url + "".join(name + params[name] for name in sorted(params))
    digest = hmac.new(auth_token.encode(), payload.encode(), hashlib.sha1).digest()
    return base64.b64encode(digest).decode()


def twilio_error(status: int, code: int, message: str) -> web.Response:
    return web.json_response(
        {
            "code": code,
            "message": message,
            "more_info": f"https://www.twilio.com/docs/errors/{code}",
            "status": status,
        },
        status=status,
    )


def _authorised(request: web.Request) -> bool:
    header = request.headers.get(hdrs.AUTHORIZATION, "")
    try:
        auth = BasicAuth.decode(header)
    except ValueError:
        return False
    return auth.login == request.match_info["account_sid"] and hmac.compare_digest(
        auth.password, request.app[AUTH_TOKEN_KEY]
    )


def _invalid_parameter(to: Any, sender: Any, body: Any) -> tuple[int, str] | None:
    """Twilio's error code and message for a bad create request, or None."""
    if not to:
        return 21604, "A 'To' phone number is required."
    if not str(to).startswith("+"):
        return 21211, f"The 'To' number {to} is not a valid phone number."
    if not sender:
        return 21603, "A 'From' phone number or MessagingServiceSid is required."
    if not body:
        return 21602, "Message body is required."
    return None


def _resource(message: dict[str, Any]) -> dict[str, Any]:
    """The Message resource as Twilio returns it."""
    keys = ("sid", "account_sid", "to", "from", "body", "status", "messaging_service_sid")
    resource = {key: message.get(key) for key in keys}
    resource.update(
        api_version=API_VERSION,
        date_created=message["date_created"],
        date_updated=message["date_updated"],
        date_sent=None,
        direction="outbound-api",
        error_code=message.get("error_code"),
        error_message=None,
        num_media="0",
        num_segments="1",
        price=None,
        price_unit="USD",
        uri=MESSAGE_PATH.format(account_sid=message["account_sid"], sid=message["sid"]),
        subresource_uris={},
    )
    return resource


async def create_message(request: web.Request) -> web.Response:
    """POST .../Messages.json: queue an SMS, answer 201 with the Message resource."""
    store = request.app[STORE_KEY]
    inbox = store.inbox("sms")
    if not _authorised(request):
        inbox.rejected += 1
        return twilio_error(401, 20003, "Authenticate")
    # The whole request is read before any latency: a client that dies while waiting for
    # the answer has still handed Twilio its message, which is the case tests provoke.
    form = await request.post()
    inbox.in_flight += 1
    try:
        return await _create_message(request, form)
    finally:
        inbox.in_flight -= 1


async def _create_message(request: web.Request, form: Any) -> web.Response:
    store = request.app[STORE_KEY]
    inbox = store.inbox("sms")
    await inbox.knobs.delay()
    retry_after = inbox.admit()
    if retry_after is not None:
        response = twilio_error(429, 20429, "Too Many Requests")
        response.headers["Retry-After"] = str(retry_after)
        return response
    if inbox.knobs.should_fail():
        inbox.rejected += 1
        status = inbox.knobs.error_status
        return twilio_error(status, 20500 if status >= 500 else 21610, "Sandbox failure (knob)")
    to, sender, body = form.get("To"), form.get("From"), form.get("Body")
    service = form.get("MessagingServiceSid")
    problem = _invalid_parameter(to, sender or service, body)
    if problem:
        inbox.rejected += 1
        return twilio_error(400, *problem)
    now = formatdate(usegmt=True)
    message: dict[str, Any] = {
        "sid": "SM" + secrets.token_hex(16),
        "account_sid": request.match_info["account_sid"],
        "to": str(to),
        "from": str(sender) if sender else None,
        "messaging_service_sid": str(service) if service else None,
        "body": str(body),
        "status": "queued",
        "date_created": now,
        "date_updated": now,
        "status_callback": str(form.get("StatusCallback") or "") or None,
        "callbacks": [],
    }
    request.app[MESSAGES_KEY][message["sid"]] = message
    store.record("sms", message)
    if message["status_callback"]:
        task = asyncio.create_task(_run_callbacks(request.app, message))
        request.app[TASKS_KEY].add(task)
        task.add_done_callback(request.app[TASKS_KEY].discard)
    logger.info("sms %s queued for %s", message["sid"], message["to"])
    return web.json_response(_resource(message), status=201)


async def list_messages(request: web.Request) -> web.Response:
    """GET .../Messages.json: the account's messages, newest first, filtered by To/From."""
    if not _authorised(request):
        return twilio_error(401, 20003, "Authenticate")
    account = request.match_info["account_sid"]
    wanted = {key.lower(): value for key, value in request.query.items() if key in ("To", "From")}
    page_size = min(int(request.query.get("PageSize", 50)), 1000)
    matches = [
        _resource(message)
        for message in reversed(request.app[MESSAGES_KEY].values())
        if message["account_sid"] == account and all(message.get(key) == value for key, value in wanted.items())
    ][:page_size]
    uri = MESSAGES_PATH.format(account_sid=account)
    return web.json_response(
        {
            "messages": matches,
            "page": 0,
            "page_size": page_size,
            "start": 0,
            "end": max(len(matches) - 1, 0),
            "uri": uri,
            "first_page_uri": uri,
            "next_page_uri": None,
            "previous_page_uri": None,
        }
    )


async def fetch_message(request: web.Request) -> web.Response:
    """GET .../Messages/{sid}.json: the current state of one message."""
    if not _authorised(request):
        return twilio_error(401, 20003, "Authenticate")
    message = request.app[MESSAGES_KEY].get(request.match_info["sid"])
    if message is None or message["account_sid"] != request.match_info["account_sid"]:
        return twilio_error(404, 20404, f"The requested resource {request.path} was not found")
    return web.json_response(_resource(message))


async def _run_callbacks(app: web.Application, message: dict[str, Any]) -> None:
    """Walk the message through queued → sent → final status, POSTing each change."""
    knobs = app[STORE_KEY].inbox("sms").knobs
    lost = knobs.callback_loss_rate > 0 and random.random() < knobs.callback_loss_rate  # noqa: S311
    message["callbacks_lost"] = lost
    for status in ("queued", "sent", knobs.final_status):
        await asyncio.sleep(knobs.callback_delay_ms / 1000)
        message["status"] = status
        message["date_updated"] = formatdate(usegmt=True)
        if not lost:
            await _post_callback(app, message)


async def _post_callback(app: web.Application, message: dict[str, Any]) -> None:
    params = {
        "AccountSid": message["account_sid"],
        "ApiVersion": API_VERSION,
        "From": message["from"] or "",
        "MessageSid": message["sid"],
        "MessageStatus": message["status"],
        "SmsSid": message["sid"],
        "SmsStatus": message["status"],
        "To": message["to"],
    }
    if message["status"] in ("failed", "undelivered"):
        params["ErrorCode"] = "30003"
    url = message["status_callback"]
    signature = twilio_signature(app[AUTH_TOKEN_KEY], url, params)
    outcome: dict[str, Any] = {"status": message["status"]}
    try:
        async with app[HTTP_KEY].post(
            url,
            data=params,
            headers={"X-Twilio-Signature": signature, "User-Agent": "TwilioProxy/1.1"},
            timeout=ClientTimeout(total=15),
        ) as response:
            outcome["http_status"] = response.status
    except Exception as exc:  # noqa: BLE001 - Twilio records a failed callback and moves on
        outcome["error"] = f"{type(exc).__name__}: {exc}"
        logger.warning("sms %s callback to %s failed: %s", message["sid"], url, exc)
    message["callbacks"].append(outcome)


def add_routes(app: web.Application) -> None:
    app[MESSAGES_KEY] = {}
    app[TASKS_KEY] = set()
    app.router.add_post(MESSAGES_PATH, create_message)
    app.router.add_get(MESSAGES_PATH, list_messages)
    app.router.add_get(MESSAGE_PATH, fetch_message)
