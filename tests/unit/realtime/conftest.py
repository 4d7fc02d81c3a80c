"""What the realtime tests share."""

from realtime.frames import Delivery, Frame


class RecordingSink:
    """A connection reduced to what the hub sees of it: it keeps every frame it is given."""

    def __init__(self) -> None:
        self.frames: list[Frame] = []

    def offer(self, frame: Frame) -> None:
        self.frames.append(frame)

    async def put(self, frame: Frame) -> None:
        self.frames.append(frame)

    def seen(self) -> list[tuple[str, object]]:
        """Each frame as (message, id) or (control type, its id field)."""
        return [
            ("message", f.id) if isinstance(f, Delivery) else (f.type, f.fields.get("id"))
            for f in self.frames
        ]
