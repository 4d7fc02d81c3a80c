"""Topics and the Redis names built from them: the only place such names are made.

`user:<id>` is private to that user; `room:<key>` and `live:<key>` are broadcast to any
authenticated user. Authorisation is decided by `topic_authorise` alone.
"""

import re
from dataclasses import dataclass

from core.parsing import id_parse
from realtime.exceptions import InvalidTopic, TopicRefused

PRIVATE_KINDS = frozenset({"user"})
BROADCAST_KINDS = frozenset({"room", "live"})
# Keys are short identifiers: they end up in Redis key names and SSE ids (`,` and `=`
# separate topics there), so anything outside this set is refused up front.
_TOPIC_RE = re.compile(r"^(?P<kind>[a-z]+):(?P<key>[A-Za-z0-9_.-]{1,64})$")
_PREFIX = "carillon:rt"


@dataclass(frozen=True, slots=True)
class Topic:
    kind: str
    key: str

    def __str__(self) -> str:
        return f"{self.kind}:{self.key}"


def topic_parse(name: object) -> Topic:
    """Parse and validate a topic name such as `room:lobby`; raise InvalidTopic."""
    if not isinstance(name, str):
        raise InvalidTopic("a topic is a string such as 'room:lobby' or 'user:42'")
    match = _TOPIC_RE.match(name)
    if match is None:
        raise InvalidTopic(
            f"{name[:80]!r} is not a topic: use user:<id>, room:<key> or live:<key>, "
            "keys of letters, digits, '_', '.', '-' (at most 64)"
        )
    kind, key = match["kind"], match["key"]
    if kind not in PRIVATE_KINDS | BROADCAST_KINDS:
        raise InvalidTopic(f"unknown topic kind {kind!r}: use user, room or live")
    if kind == "user":
        try:
            id_parse(key)
        except ValueError as exc:
            raise InvalidTopic(f"user topics take a numeric user id, not {key!r}") from exc
    return Topic(kind, key)


def user_topic(user_id: int) -> str:
    """The private topic of one user."""
    return f"user:{int(user_id)}"


def topic_authorise(*, topic: Topic, user_id: int | None) -> None:
    """Allow a subscription or raise TopicRefused with the reason. The one policy place."""
    if user_id is None:
        raise TopicRefused("log in (session) or pass a token from POST /api/realtime/token/")
    if topic.kind in PRIVATE_KINDS and topic.key != str(user_id):
        raise TopicRefused(f"{topic} is another user's private topic")


def pubsub_channel(topic: Topic) -> str:
    return f"{_PREFIX}:pub:{topic}"


def topic_from_pubsub_channel(channel: str) -> Topic:
    return topic_parse(channel.removeprefix(f"{_PREFIX}:pub:"))


def history_key(topic: Topic) -> str:
    return f"{_PREFIX}:hist:{topic}"


def history_key_pattern() -> str:
    """A SCAN pattern matching every topic's history key."""
    return f"{_PREFIX}:hist:*"


def sequence_key(topic: Topic) -> str:
    return f"{_PREFIX}:seq:{topic}"


# Counters for /metrics: messages published, and per server process its connections
# and the frames it delivered (a hash that expires when the process stops refreshing it).
STATS_PUBLISHED_KEY = f"{_PREFIX}:stats:published"
# Which Redis primary the history's ids were last handed out on, and the epoch they are in
# (realtime/history.py).
PRIMARY_KEY = f"{_PREFIX}:primary"
STATS_PROCESS_PATTERN = f"{_PREFIX}:stats:process:*"


def stats_process_key(process: str) -> str:
    return f"{_PREFIX}:stats:process:{process}"


def presence_key(user_id: int) -> str:
    return f"{_PREFIX}:presence:{int(user_id)}"


def presence_state_key(user_id: int) -> str:
    return f"{_PREFIX}:presence-state:{int(user_id)}"
