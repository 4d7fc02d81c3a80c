"""Who a connection acts for: short-lived signed tokens for clients that cannot carry the
Django session, and the session itself for same-origin WebSocket connections."""

from importlib import import_module
from typing import Any

from channels.auth import get_user
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


async def websocket_session_user(scope: dict[str, Any]) -> Any:
    """The user of the Django session cookie a WebSocket handshake carried; AnonymousUser
    without one. Read once, at connect: Channels' AuthMiddlewareStack also wraps every
    outgoing message to save a modified session, which a connection that never changes its
    session paid on each frame (about 15% of the server's CPU in fan-out, py-spy)."""
    cookie = b"; ".join(value for name, value in scope.get("headers", []) if name == b"cookie")
    session_key = parse_cookie(cookie.decode("latin-1")).get(settings.SESSION_COOKIE_NAME)
    if not session_key:
        return AnonymousUser()
    session = import_module(settings.SESSION_ENGINE).SessionStore(session_key)
    return await get_user({"session": session})
