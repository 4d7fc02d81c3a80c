"""What the server sends, encoded once per message however many connections get it."""

import json
from dataclasses import dataclass
from functools import cached_property

from realtime.history import Message


def _dumps(value: object) -> str:
    return json.dumps(value, separators=(",", ":"))


class Delivery:
    """One published message on its way to every local subscriber of its topic."""

    __slots__ = ("__dict__", "message")

    def __init__(self, message: Message) -> None:
        self.message = message

    @property
    def id(self) -> int:
        return self.message["id"]

    @cached_property
    def ws_text(self) -> str:
        m = self.message
        return _dumps(
            {
                "type": "message",
                "topic": m["topic"],
                "id": m["id"],
                "event": m["event"],
                "data": m["data"],
            }
        )

    @cached_property
    def sse_data(self) -> str:
        m = self.message
        return _dumps({"topic": m["topic"], "id": m["id"], "data": m["data"]})


@dataclass(frozen=True, slots=True)
class Control:
    """A frame that is not a published message: resync, error, heartbeat, subscribed."""

    type: str
    fields: dict[str, object]

    @property
    def ws_text(self) -> str:
        return _dumps({"type": self.type, **self.fields})

    @property
    def sse_data(self) -> str:
        return _dumps(self.fields)


Frame = Delivery | Control
HEARTBEAT = Control("heartbeat", {})
