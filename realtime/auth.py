"""Short-lived signed tokens for connections that cannot carry the Django session."""

from django.conf import settings
from django.core import signing

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
        raise InvalidToken("token expired: get a new one from POST /api/realtime/token") from exc
    except signing.BadSignature as exc:
        raise InvalidToken("token is not valid: get one from POST /api/realtime/token") from exc
    return int(value)
