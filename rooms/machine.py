"""The rooms' state machine: the rooms of the shards one owner holds, in memory.

Pure: no database, broker or network here. Inputs come in as method calls (a message
enqueued, an ack, a send's outcome, a timer, an operator's action); what they decide
goes out as a `Record` (the rows to write in the next group commit, and the sends to
make once it committed) and as timers. The owner process (rooms/owner.py) does the I/O.

The rules (docs/ordered-delivery.md, "States and transitions"): one message in flight
per room; the next one on the ack, or on the ack timeout under the provider's `proceed`
/ `resend` policy; duplicate and late acks change nothing. Two more, which make a crash at any point safe:
- **A send is made only once the state that names it is written.** A new owner reading
  the record back therefore knows of every send that might have happened: a message in
  flight whose send is not recorded is *in doubt*, and the owner asks the platform
  whether it holds it (by idempotency key) before sending it, so it is neither lost nor
  repeated.
- **The owner knows every message of a room up to `known`**, its highest sequence seen.
  Sequences are gapless and committed in order (the enqueue takes the room's row lock
  to number a message), so when an input names sequence s > known + 1 the messages in
  between are already committed, and the owner reads them before going on. The head of
  the FIFO is then always the lowest sequence queued.

Idle rooms (nothing queued, nothing in flight) are kept only up to a bound, the oldest
idle first to go (`evict`): the owner calls it once their state is written, and reads a
room back from the record on its next input.
"""

import bisect
import enum
import heapq
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from rooms.models import ChatProvider, RoomMessage

Status = RoomMessage.Status

# A transient refusal (5xx, 429, timeout) is tried again after 1, 2, 4 … 30 s, then the
# message is given up as failed: the send task's retries under the other sequencer.
SEND_TRIES = 9
SEND_BACKOFF_MAX_S = 30.0


@dataclass(frozen=True)
class Provider:
    ack_timeout_ms: int
    resends: int  # how many times a timed-out message is sent again (0: proceed)


def provider_config(provider: ChatProvider) -> Provider:
    resends = provider.max_resends if provider.timeout_policy == ChatProvider.TimeoutPolicy.RESEND else 0
    return Provider(ack_timeout_ms=provider.ack_timeout_ms, resends=resends)


@dataclass(frozen=True, order=True)
class Queued:
    sequence: int
    message_id: int
    key: str
    body: str


@dataclass
class Flight:
    message: Queued
    attempt: int
    # The platform holds this attempt (its send answered, or a lookup found it); False
    # while the send is pending, or in doubt after a takeover.
    sent: bool = False
    tries: int = 0  # transient failures of this attempt's send
    provider_message_id: str = ""
    # Read back in flight with no send recorded: the previous owner may have made it.
    # Before sending, ask the platform whether it holds the message.
    doubt: bool = False


@dataclass
class RoomState:
    room_id: int
    shard: int
    provider_id: int
    recipient: str
    known: int  # every message up to this sequence is known (queued, in flight or done)
    queue: list[Queued] = field(default_factory=list)  # sorted by sequence
    flight: Flight | None = None


@dataclass(frozen=True)
class Send:
    room_id: int
    message_id: int
    attempt: int


class Timer(enum.Enum):
    ACK_TIMEOUT = "ack_timeout"
    SEND_RETRY = "send_retry"


@dataclass(frozen=True, order=True)
class Due:
    at: datetime
    timer: Timer = field(compare=False)
    room_id: int = field(compare=False)
    message_id: int = field(compare=False)
    attempt: int = field(compare=False)


@dataclass
class Record:
    """What the next group commit writes, and what to do once it committed."""

    messages: dict[int, dict[str, Any]] = field(default_factory=dict)
    rooms: dict[int, dict[str, Any]] = field(default_factory=dict)
    timeouts: dict[int, int] = field(default_factory=dict)  # room id -> timeouts to add
    shards: set[int] = field(default_factory=set)
    sends: list[Send] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.messages or self.rooms or self.timeouts or self.sends)

    def message(self, room: RoomState, message_id: int, **changes: Any) -> None:
        self.messages.setdefault(message_id, {}).update(changes)
        self.shards.add(room.shard)

    def room(self, room: RoomState, **changes: Any) -> None:
        self.rooms.setdefault(room.room_id, {}).update(changes)
        self.shards.add(room.shard)


class Machine:
    """The state of every room of the shards this owner holds."""

    def __init__(self) -> None:
        self.rooms: dict[int, RoomState] = {}
        # Rooms with nothing queued or in flight, the longest idle first.
        self.idle: OrderedDict[int, None] = OrderedDict()
        self.providers: dict[int, Provider] = {}
        self.record = Record()
        self.timers: list[Due] = []  # a heap, read by the owner

    def take_record(self) -> Record:
        record, self.record = self.record, Record()
        return record

    # -- what the owner reads back when it takes a shard -------------------------------

    def load(self, room: RoomState, messages: Iterable[dict[str, Any]], now: datetime) -> list[Send]:
        """Adopt a room as the record has it; return the sends in doubt (to look up).

        `messages` are its queued and in-flight rows. An idle room with messages queued
        puts its head in flight at once.
        """
        self.rooms[room.room_id] = room
        doubt: list[Send] = []
        for row in messages:
            queued = Queued(row["sequence"], row["id"], str(row["idempotency_key"]), row["body"])
            room.known = max(room.known, queued.sequence)
            if row["status"] == Status.QUEUED:
                bisect.insort(room.queue, queued)
            else:
                room.flight = Flight(queued, row["attempts"], sent=row["sent_at"] is not None,
                                     provider_message_id=row["provider_message_id"])
        flight = room.flight
        if flight is None:
            self._advance(room, now, write=False)
        elif flight.sent:
            self._arm(room, flight, now)
        else:
            flight.doubt = True
            doubt.append(Send(room.room_id, flight.message.message_id, flight.attempt))
        return doubt

    def forget(self, room_id: int) -> None:
        """Stop holding a room (deleted from the record, or handed to another owner):
        nothing more is sent for it (its timers and the outcomes of its calls then find
        no room, and change nothing)."""
        self.rooms.pop(room_id, None)
        self.idle.pop(room_id, None)

    def let_go(self, shard: int) -> None:
        """Stop holding a shard's rooms (handed to another owner, their state written)."""
        for room_id in [room_id for room_id, room in self.rooms.items() if room.shard == shard]:
            self.forget(room_id)

    def evict(self, keep: int) -> list[RoomState]:
        """Drop the longest-idle rooms beyond `keep` idle ones; return those that went.

        Only once their state is written: the owner then reads such a room back from the
        record on its next input, as one it never held."""
        evicted = []
        while len(self.idle) > keep:
            room_id, _ = self.idle.popitem(last=False)
            room = self.rooms.pop(room_id, None)
            if room is not None:
                evicted.append(room)
        return evicted

    # -- inputs ------------------------------------------------------------------------

    def enqueued(self, room: RoomState, message: Queued, now: datetime) -> bool:
        """A message committed to the room's FIFO; False if already known (a repeat)."""
        room = self.rooms.setdefault(room.room_id, room)
        if message.sequence <= room.known:
            return False
        room.known = message.sequence
        bisect.insort(room.queue, message)
        if room.flight is None:
            self._advance(room, now)
        return True

    def acked(self, room_id: int, key: str, provider_message_id: str, now: datetime) -> bool:
        """The platform acknowledged a message: False for one not in flight (nothing changes)."""
        room = self.rooms.get(room_id)
        flight = room.flight if room else None
        if room is None or flight is None or flight.message.key != key:
            return False
        changes: dict[str, Any] = {}
        if not flight.sent:
            # The webhook outran the sending thread's answer (or a lookup's): the platform
            # had it by now, and that answer, when it comes, finds no flight to record.
            changes["sent_at"] = now
        self.record.message(
            room, flight.message.message_id, status=Status.ACKED, acked_at=now, finished_at=now,
            provider_message_id=flight.provider_message_id or provider_message_id, **changes,
        )
        self.record.room(room, last_ack_at=now)
        room.flight = None
        self._advance(room, now)
        return True

    def sent(self, send: Send, provider_message_id: str, now: datetime) -> bool:
        """The platform took (or, by a lookup, holds) an attempt: arm its ack timeout."""
        room, flight = self._holding(send)
        if room is None or flight is None:
            return False
        flight.sent, flight.doubt, flight.provider_message_id = True, False, provider_message_id
        self.record.message(room, send.message_id, sent_at=now, provider_message_id=provider_message_id)
        self._arm(room, flight, now)
        return True

    def absent(self, send: Send) -> bool:
        """A lookup found that the platform does not hold a message in doubt: send it."""
        room, flight = self._holding(send)
        if room is None or flight is None or not flight.doubt:
            return False
        flight.doubt = False
        self.record.sends.append(send)
        return True

    def refused(self, send: Send, reason: str, now: datetime) -> bool:
        """The platform refused the message for good: it failed, the next one goes."""
        room, flight = self._holding(send)
        if room is None or flight is None:
            return False
        self._finish(room, flight, Status.FAILED, reason[:255], now)
        return True

    def failed_transiently(self, send: Send, reason: str, now: datetime) -> bool:
        """A send to try again later (backoff), or, past SEND_TRIES, to give up as failed."""
        room, flight = self._holding(send)
        if room is None or flight is None:
            return False
        flight.tries += 1
        if flight.tries >= SEND_TRIES:
            self._finish(room, flight, Status.FAILED, reason[:255], now)
        else:
            delay = min(2.0 ** (flight.tries - 1), SEND_BACKOFF_MAX_S)
            self._due(Due(now + timedelta(seconds=delay), Timer.SEND_RETRY, room.room_id,
                          send.message_id, send.attempt))
        return True

    def fire(self, due: Due, now: datetime) -> str:
        """A timer is due: an ack timeout (resend or move on), or a send to try again."""
        send = Send(due.room_id, due.message_id, due.attempt)
        room, flight = self._holding(send)
        if room is None or flight is None:
            return "stale"
        if due.timer is Timer.SEND_RETRY:
            if flight.sent:
                return "stale"
            self.record.sends.append(send)
            return "retried"
        if not flight.sent:
            return "stale"
        provider = self.providers[room.provider_id]
        if flight.attempt <= provider.resends:
            self._resend(room, flight, now)
            return "resent"
        note = f"no ack after {flight.attempt} attempt(s) of {provider.ack_timeout_ms} ms; counted as sent"
        self.record.timeouts[room.room_id] = self.record.timeouts.get(room.room_id, 0) + 1
        self.record.shards.add(room.shard)
        self._finish(room, flight, Status.TIMED_OUT, note, now)
        return "proceeded"

    def skip(self, room_id: int, message_id: int, now: datetime) -> bool:
        """Operator: drop a queued or in-flight message; the next one goes out."""
        room = self.rooms.get(room_id)
        if room is None:
            return False
        note = "skipped by an operator"
        if room.flight is not None and room.flight.message.message_id == message_id:
            self._finish(room, room.flight, Status.SKIPPED, note, now)
            return True
        for index, queued in enumerate(room.queue):
            if queued.message_id == message_id:
                del room.queue[index]
                self.record.message(room, message_id, status=Status.SKIPPED, finished_at=now, note=note)
                return True
        return False

    def retry(self, room_id: int, message_id: int, now: datetime) -> bool:
        """Operator: send the in-flight message again (same key, next attempt)."""
        room = self.rooms.get(room_id)
        if room is None or room.flight is None or room.flight.message.message_id != message_id:
            return False
        self._resend(room, room.flight, now)
        return True

    def current(self, send: Send) -> Flight | None:
        """The flight a send is for, if its room still holds that attempt."""
        return self._holding(send)[1]

    def room_of(self, send: Send) -> RoomState:
        return self.rooms[send.room_id]

    # -- transitions -------------------------------------------------------------------

    def _holding(self, send: Send) -> tuple[RoomState | None, Flight | None]:
        room = self.rooms.get(send.room_id)
        flight = room.flight if room else None
        if room is None or flight is None:
            return room, None
        if flight.message.message_id != send.message_id or flight.attempt != send.attempt:
            return room, None
        return room, flight

    def _finish(self, room: RoomState, flight: Flight, status: str, note: str, now: datetime) -> None:
        self.record.message(room, flight.message.message_id, status=status, finished_at=now, note=note)
        room.flight = None
        self._advance(room, now)

    def _advance(self, room: RoomState, now: datetime, *, write: bool = True) -> None:
        """Put the FIFO's head in flight, or leave the room idle (`write`: record it so;
        False for a room read back idle, whose record already says it)."""
        if not room.queue:
            if write:
                self.record.room(room, in_flight_id=None, attempt=0)
            self.idle[room.room_id] = None
            self.idle.move_to_end(room.room_id)
            return
        self.idle.pop(room.room_id, None)
        head = room.queue.pop(0)
        room.flight = Flight(head, attempt=1)
        self.record.message(room, head.message_id, status=Status.IN_FLIGHT, attempts=1, dispatched_at=now)
        self.record.room(room, in_flight_id=head.message_id, attempt=1)
        self.record.sends.append(Send(room.room_id, head.message_id, 1))

    def _resend(self, room: RoomState, flight: Flight, now: datetime) -> None:
        flight.attempt, flight.sent, flight.tries = flight.attempt + 1, False, 0
        self.record.message(room, flight.message.message_id, attempts=flight.attempt, dispatched_at=now)
        self.record.room(room, attempt=flight.attempt)
        self.record.sends.append(Send(room.room_id, flight.message.message_id, flight.attempt))

    def _arm(self, room: RoomState, flight: Flight, now: datetime) -> None:
        timeout = timedelta(milliseconds=self.providers[room.provider_id].ack_timeout_ms)
        self._due(Due(now + timeout, Timer.ACK_TIMEOUT, room.room_id, flight.message.message_id, flight.attempt))

    def _due(self, due: Due) -> None:
        heapq.heappush(self.timers, due)
