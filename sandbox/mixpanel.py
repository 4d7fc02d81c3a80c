"""Mixpanel's ingestion API: /track (project token) and /import (project secret).

Bodies are accepted as Mixpanel accepts them: a form or query field `data` holding JSON
or base64-encoded JSON, or an application/json body; one event or a list of them.
Events are deduplicated as Mixpanel does, on (event, distinct_id, time, $insert_id).
/import with strict=1 checks each event as Mixpanel does (a $insert_id, a time since
1971, a real distinct_id), takes the valid ones and answers 400 naming the others in
`failed_records`: a partial success, not a refusal of the batch.
"""

import base64
import binascii
import hmac
import json
import logging
import re
from http import HTTPStatus
from typing import Any

from aiohttp import BasicAuth, hdrs, web

from sandbox.store import STORE_KEY

logger = logging.getLogger(__name__)

API_SECRET_KEY = web.AppKey("mixpanel_api_secret", str)
MAX_EVENTS_PER_REQUEST = 2000
EARLIEST_TIME = 31_536_000  # 1971-01-01, in seconds since the epoch
# distinct_ids Mixpanel refuses because they betray a bug in the sender.
PLACEHOLDER_DISTINCT_IDS = frozenset(
    {"anon", "anonymous", "nil", "none", "null", "n/a", "na", "undefined", "unknown", "<nil>", "0", "-1",
     "00000000-0000-0000-0000-000000000000", "[]", "{}"}
)
INSERT_ID = re.compile(r"[A-Za-z0-9-]{1,36}")


class InvalidBatchError(ValueError):
    """The request body is not a batch of events Mixpanel would take."""


def _answer(request: web.Request, error: str | None, status: int = 200) -> web.Response:
    if request.get("strict"):
        # Strict /import answers JSON, always, with the HTTP status as its code.
        return web.json_response({"code": status, "error": error, "status": HTTPStatus(status).phrase}, status=status)
    if request.get("verbose"):
        return web.json_response({"status": 0 if error else 1, "error": error}, status=status)
    return web.Response(text="0" if error else "1", status=status)


def _decode(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        pass
    try:
        return json.loads(base64.b64decode(text, validate=False))
    except (ValueError, binascii.Error) as exc:
        raise InvalidBatchError("data is neither JSON nor base64-encoded JSON") from exc


async def _events(request: web.Request) -> list[dict[str, Any]]:
    if request.content_type == "application/json":
        batch = _decode(await request.text())
    else:
        form = await request.post()
        data = form.get("data") or request.query.get("data")
        if not data:
            raise InvalidBatchError("no data: send events in a 'data' field or a JSON body")
        batch = _decode(str(data))
    events = batch if isinstance(batch, list) else [batch]
    if not 0 < len(events) <= MAX_EVENTS_PER_REQUEST:
        raise InvalidBatchError(f"a request carries 1 to {MAX_EVENTS_PER_REQUEST} events, not {len(events)}")
    for index, event in enumerate(events):
        if not isinstance(event, dict) or not event.get("event"):
            raise InvalidBatchError(f"event {index} has no 'event' name")
        if not isinstance(event.get("properties", {}), dict):
            raise InvalidBatchError(f"event {index}: 'properties' must be an object")
    return events


def _strict_problem(properties: dict[str, Any]) -> tuple[str, str] | None:
    """What strict /import refuses in one event: (field, message), or None."""
    insert_id = properties.get("$insert_id")
    if not isinstance(insert_id, str) or not INSERT_ID.fullmatch(insert_id):
        return "properties.$insert_id", "'properties.$insert_id' is required: 1 to 36 letters, digits and dashes"
    moment = properties.get("time")
    if isinstance(moment, bool) or not isinstance(moment, int | float):
        return "properties.time", "'properties.time' is required, in seconds or milliseconds since epoch"
    seconds = moment / 1000 if moment > 1e11 else moment
    if seconds < EARLIEST_TIME:
        return "properties.time", "'properties.time' is invalid: events before 1971-01-01 are not accepted"
    distinct_id = properties.get("distinct_id")
    if not isinstance(distinct_id, str | int) or str(distinct_id).strip().lower() in PLACEHOLDER_DISTINCT_IDS:
        return "properties.distinct_id", "'properties.distinct_id' is invalid: a placeholder value"
    return None


def _import_authorised(request: web.Request) -> bool:
    try:
        auth = BasicAuth.decode(request.headers.get(hdrs.AUTHORIZATION, ""))
    except ValueError:
        return False
    # Legacy auth is "secret:" ; service accounts send "user:secret".
    secret = auth.login if not auth.password else auth.password
    return hmac.compare_digest(secret, request.app[API_SECRET_KEY])


async def _ingest(request: web.Request, endpoint: str) -> web.Response:
    store = request.app[STORE_KEY]
    inbox = store.inbox("mixpanel")
    # verbose=1 (query or form) asks for a JSON answer; the client libraries send it.
    form = await request.post()
    request["verbose"] = "1" in (request.query.get("verbose"), form.get("verbose"))
    request["strict"] = strict = endpoint == "import" and request.query.get("strict") == "1"
    await inbox.knobs.delay()
    if endpoint == "import" and not _import_authorised(request):
        inbox.rejected += 1
        return _answer(request, "invalid project secret", status=401)
    retry_after = inbox.admit()
    if retry_after is not None:
        response = _answer(request, "too many requests", status=429)
        response.headers["Retry-After"] = str(retry_after)
        return response
    if inbox.knobs.should_fail():
        inbox.rejected += 1
        return _answer(request, "sandbox failure (knob)", status=inbox.knobs.error_status)
    try:
        events = await _events(request)
    except InvalidBatchError as exc:
        inbox.rejected += 1
        return _answer(request, str(exc), status=400)
    seen = store.seen_insert_ids
    inbox.requests += 1
    failed = []
    for index, event in enumerate(events):
        properties = event.get("properties", {})
        if endpoint == "track" and not properties.get("token"):
            inbox.rejected += 1
            return _answer(request, "token, missing or empty", status=400)
        problem = _strict_problem(properties) if strict else None
        if problem is not None:
            field, message = problem
            failed.append({"index": index, "insert_id": properties.get("$insert_id"), "field": field, "message": message})
            continue
        insert_id = properties.get("$insert_id")
        if insert_id is not None:
            key = (event["event"], properties.get("distinct_id"), int(properties.get("time") or 0), insert_id)
            if key in seen:
                inbox.duplicates += 1
                continue
            seen.add(key)
        store.record("mixpanel", {"endpoint": endpoint, "event": event["event"], "properties": properties})
    if not strict:
        return _answer(request, None)
    imported = len(events) - len(failed)
    if failed:
        inbox.rejected += len(failed)
        return web.json_response(
            {"code": 400, "error": "some data points in the request failed validation", "status": "Bad Request",
             "num_records_imported": imported, "failed_records": failed},
            status=400,
        )
    return web.json_response({"code": 200, "num_records_imported": imported, "status": "OK"})


async def track(request: web.Request) -> web.Response:
    return await _ingest(request, "track")


async def import_events(request: web.Request) -> web.Response:
    return await _ingest(request, "import")


def add_routes(app: web.Application) -> None:
    for path in ("/track", "/track/"):
        app.router.add_route("*", path, track)
    for path in ("/import", "/import/"):
        app.router.add_post(path, import_events)
