"""What WebSocket and SSE connections share: who is connecting, and the resume ids."""

import asyncio
import logging
from typing import Any

from django.contrib.auth import get_user_model

from core.parsing import id_parse
from realtime.auth import realtime_token_user_id
from realtime.exceptions import InvalidFrame, InvalidToken
from realtime.frames import Frame
from realtime.topics import Topic, topic_parse

logger = logging.getLogger(__name__)

MAX_TOPICS_PER_CONNECTION = 100


async def connection_user_id(*, user: Any, token: str | None) -> int | None:
    """The user a connection acts for: a token wins over the session; None when anonymous."""
    if token is not None:
        user_id = realtime_token_user_id(token)
        if not await get_user_model().objects.filter(pk=user_id, is_active=True).aexists():
            raise InvalidToken("the token's user no longer exists or is inactive")
        return user_id
    if user is not None and user.is_authenticated:
        return int(user.pk)
    return None


def resume_ids_parse(value: str) -> dict[Topic, int]:
    """Parse an SSE id, `room:lobby=12,user:3=40`, into the last id per topic."""
    ids: dict[Topic, int] = {}
    if not value.strip():
        return ids
    for part in value.split(",")[:MAX_TOPICS_PER_CONNECTION]:
        name, sep, number = part.strip().rpartition("=")
        try:
            if not sep:
                raise ValueError("no '='")
            ids[topic_parse(name)] = id_parse(number)
        except ValueError as exc:
            raise InvalidFrame(
                f"bad resume id {part[:80]!r}: use topic=id pairs joined by commas (room:lobby=12)"
            ) from exc
    return ids


def resume_ids_format(ids: dict[Topic, int]) -> str:
    """The SSE id of a stream: every topic's position, `room:lobby=12,user:3=40`."""
    return ",".join(f"{topic}={last}" for topic, last in ids.items())


def frame_offer(outgoing: "asyncio.Queue[Frame]", frame: Frame) -> bool:
    """Queue a frame on a connection's bounded buffer without waiting; False when it is full
    (a slow consumer)."""
    try:
        outgoing.put_nowait(frame)
    except asyncio.QueueFull:
        return False
    return True
