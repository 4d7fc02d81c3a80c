"""Who a connection acts for: short-lived signed tokens for clients that cannot carry the
Django session, and the session itself for same-origin WebSocket connections."""

from importlib import import_module
from typing import Any

from channels.auth import get_user
from channels.middleware import BaseMiddleware
from django.conf import settings
from django.contrib.auth.models import AnonymousUser
from django.core import signing
from django.http.cookie import parse_cookie

from realtime.exceptions import InvalidToken

_SALT = "carillon.realtime.token"


def realtime_token_create(*, user_id: int) -> str:
    """A token naming `user_id`, valid for REALTIME_TOKEN_MAX_AGE_SECONDS."""
    return signing.TimestampSigner(salt=_SALT).sign(str(int(user_id)))


def realtime_token_user_id(token: str) -> int:
    """The user id a token names; raise InvalidToken when forged, malformed or expired."""
    try:
        value = signing.TimestampSigner(salt=_SALT).unsign(
            token, max_age=settings.REALTIME_TOKEN_MAX_AGE_SECONDS
        )
    except signing.SignatureExpired as exc:
        raise InvalidToken("token expired: get a new one from POST /api/realtime/token/") from exc
    except signing.BadSignature as exc:
        raise InvalidToken("token is not valid: get one from POST /api/realtime/token/") from exc
    return int(value)


class SessionUserMiddleware(BaseMiddleware):
    """Give a WebSocket scope its `user` from the Django session cookie, once, at connect.

    Channels' AuthMiddlewareStack does the same but also wraps every outgoing message to
    save a modified session; a connection that never changes its session paid that on
    each frame (about 15% of the server's CPU in fan-out, measured with py-spy), so this
    reads the session and leaves `send` alone.
    """

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> Any:
        cookie = b"; ".join(value for name, value in scope.get("headers", []) if name == b"cookie")
        session_key = parse_cookie(cookie.decode("latin-1")).get(settings.SESSION_COOKIE_NAME)
        user: Any = AnonymousUser()
        if session_key:
            session = import_module(settings.SESSION_ENGINE).SessionStore(session_key)
            user = await get_user({"session": session})
        return await super().__call__({**scope, "user": user}, receive, send)
