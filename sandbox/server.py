"""Assemble the sandbox: one asyncio process serving HTTP (Twilio, Mixpanel, Postmark, its own API
and page) and SMTP. Run it with `python -m sandbox --help`."""

import argparse
import asyncio
import html
import logging
import signal
from dataclasses import asdict
from typing import Any

from aiohttp import ClientSession, web

from sandbox import chat, mixpanel, postmark, twilio
from sandbox.smtp import smtp_protocol_factory
from sandbox.store import AUTH_TOKEN_KEY, HTTP_KEY, PROVIDERS, STORE_KEY, KnobError, Store

logger = logging.getLogger(__name__)


def _provider(request: web.Request) -> str:
    provider = request.match_info["provider"]
    if provider not in PROVIDERS:
        raise web.HTTPNotFound(
            text=f'{{"error": "unknown_provider", "message": "providers are {", ".join(PROVIDERS)}"}}',
            content_type="application/json",
        )
    return provider


async def list_received(request: web.Request) -> web.Response:
    """GET /api/received[/{provider}]: what arrived, oldest first; ?limit=N keeps the last N."""
    store = request.app[STORE_KEY]
    names = [_provider(request)] if "provider" in request.match_info else list(PROVIDERS)
    limit = int(request.query.get("limit", 1000))
    body: dict[str, Any] = {}
    for name in names:
        inbox = store.inbox(name)
        items = list(inbox.received)[-limit:] if limit else []
        body[name] = {**inbox.summary(), "received": items}
    return web.json_response(body)


async def reset(request: web.Request) -> web.Response:
    """POST /api/reset: forget everything received and restore healthy knobs."""
    request.app[STORE_KEY].reset()
    request.app[chat.STATE_KEY].clear()
    return web.json_response({"status": "reset"})


async def knobs(request: web.Request) -> web.Response:
    """GET or PUT /api/knobs/{provider}: read or change how a provider misbehaves."""
    inbox = request.app[STORE_KEY].inbox(_provider(request))
    if request.method == "PUT":
        try:
            changes = await request.json()
            if not isinstance(changes, dict):
                raise KnobError("send a JSON object of knob names to values")
            inbox.knobs.update(changes)
        except (ValueError, KnobError) as exc:
            return web.json_response({"error": "invalid_knobs", "message": str(exc)}, status=400)
    return web.json_response(asdict(inbox.knobs))


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def page(request: web.Request) -> web.Response:
    """GET /: a page listing the last messages per provider, for a person to look at."""
    store = request.app[STORE_KEY]
    sections = []
    for name in PROVIDERS:
        inbox = store.inbox(name)
        rows = "".join(
            f"<tr><td>{item['seq']}</td><td><pre>{html.escape(_summary(name, item))}</pre></td></tr>"
            for item in reversed(list(inbox.received)[-50:])
        )
        sections.append(
            f"<h2>{name}</h2><p>accepted {inbox.accepted}, rejected {inbox.rejected}, "
            f"duplicates {inbox.duplicates}; knobs {html.escape(str(asdict(inbox.knobs)))}</p>"
            f"<table>{rows or '<tr><td>nothing yet</td></tr>'}</table>"
        )
    return web.Response(
        text="<!doctype html><title>Carillon provider sandbox</title>"
        "<style>body{font-family:sans-serif;margin:2em}pre{margin:0}td{border-bottom:1px solid #ddd}</style>"
        "<h1>Carillon provider sandbox</h1><p>JSON: <a href='/api/received'>/api/received</a></p>"
        + "".join(sections),
        content_type="text/html",
    )


def _summary(provider: str, item: dict[str, Any]) -> str:
    if provider == "email":
        return f"{item['subject']!r} to {', '.join(item['rcpt_to'])} ({item['message_id']})"
    if provider == "sms":
        return f"{item['sid']} to {item['to']}: {item['body']!r} [{item['status']}]"
    if provider == "chat":
        return f"{item['id']} room {item['room']} #{item['sequence']}: {item['body']!r}"
    return f"{item['endpoint']} {item['event']} {item['properties'].get('distinct_id')}"


def build_app(
    *, twilio_auth_token: str, mixpanel_api_secret: str, chat_webhook_secret: str = "sandbox-chat-secret",  # noqa: S107 - the sandbox's own
    postmark_server_token: str = "sandbox-postmark-token",  # noqa: S107 - the sandbox's own
) -> web.Application:
    """Build the HTTP side of the sandbox (the SMTP side is started by `serve`)."""
    app = web.Application()
    app[STORE_KEY] = Store()
    app[AUTH_TOKEN_KEY] = twilio_auth_token
    app[mixpanel.API_SECRET_KEY] = mixpanel_api_secret

    async def http_client(app: web.Application) -> Any:
        app[HTTP_KEY] = ClientSession()
        yield
        await app[HTTP_KEY].close()

    app.cleanup_ctx.append(http_client)
    app.router.add_get("/", page)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/api/received", list_received)
    app.router.add_get("/api/received/{provider}", list_received)
    app.router.add_post("/api/reset", reset)
    app.router.add_route("GET", "/api/knobs/{provider}", knobs)
    app.router.add_route("PUT", "/api/knobs/{provider}", knobs)
    twilio.add_routes(app)
    mixpanel.add_routes(app)
    chat.add_routes(app, secret=chat_webhook_secret)
    postmark.add_routes(app, server_token=postmark_server_token)
    return app


async def serve(args: argparse.Namespace) -> None:
    app = build_app(
        twilio_auth_token=args.twilio_auth_token,
        mixpanel_api_secret=args.mixpanel_api_secret,
        chat_webhook_secret=args.chat_webhook_secret,
        postmark_server_token=args.postmark_server_token,
    )
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, args.host, args.http_port, backlog=1024).start()
    loop = asyncio.get_running_loop()
    smtp = await loop.create_server(lambda: smtp_protocol_factory(app[STORE_KEY]), args.host, args.smtp_port)
    logger.info("sandbox: HTTP on http://%s:%d, SMTP on %s:%d", args.host, args.http_port, args.host, args.smtp_port)
    stop = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    smtp.close()
    await runner.cleanup()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m sandbox", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--http-port", type=int, default=8030)
    parser.add_argument("--smtp-port", type=int, default=1025)
    parser.add_argument("--twilio-auth-token", default="sandbox-auth-token")
    parser.add_argument("--mixpanel-api-secret", default="sandbox-mixpanel-secret")
    parser.add_argument("--chat-webhook-secret", default="sandbox-chat-secret")
    parser.add_argument("--postmark-server-token", default="sandbox-postmark-token")
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    asyncio.run(serve(args))
