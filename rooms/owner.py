"""The shard owner process (`manage.py rooms_owner`): sequences the rooms of the shards
RabbitMQ gives it, with their state in memory (rooms/machine.py) and the database as
the record, written by group commit.

One loop on the main thread: read the inputs that arrived on the shard queues, take
the outcomes of the platform calls made by a pool of threads, fire the timers that are
due, then write everything decided since the last write in one transaction, fenced by
the epoch of each shard it touches (`RoomShard`), and only then acknowledge the inputs
to RabbitMQ and make the sends the transaction named. A crash anywhere therefore leaves
either an input still on its queue (unacknowledged: the next owner reads it again) or
its effect in the record (which the next owner reads back), never neither.

Taking a shard: RabbitMQ's single-active-consumer delivers a shard's inputs to one owner
at a time. The first input from a shard the owner does not hold (every owner publishes a
`tick` to every shard each second, so one always comes) makes it take the shard: bump
the shard's epoch, read back its rooms with messages queued or in flight, and look up
at the platform every send in doubt. The other rooms, and those idle for long once
more than `idle_rooms` are idle, are not held: a room's next message reads it back.

Sharing the shards: RabbitMQ makes the first consumer of a queue its active one, so the
first owner started would hold every shard. The ticks name their owner, so an owner
knows how many are alive; one holding more than its share hands a shard a second over
to the next owner waiting on its queue, by cancelling its consumer there.

Ack timeouts wait for the queue: an ack is an input like the others, and while the owner
is behind, one that the platform sent in time waits behind the backlog. So a timeout
that falls due fires only once the owner has read, from the room's shard queue, a tick
of its own sent after the deadline (it sends one to the shard at once, a "mark"): every
ack that reached the queue before the deadline has then been read.
"""

import heapq
import logging
import math
import os
import queue
import select
import socket
import ssl
import threading
import time
from collections import defaultdict, deque
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import DatabaseError, close_old_connections, transaction
from django.db import connection as db_connection
from django.db.models import F, Max, QuerySet
from django.utils import timezone
from kombu import Consumer, Message, Producer
from kombu.exceptions import KombuError

from config.celery import app as critical_app
from core.errors import ProviderPermanentError
from rooms.machine import Due, Machine, Queued, RoomState, Send, Timer, provider_config
from rooms.models import SHARDS, ChatProvider, Room, RoomMessage, RoomShard
from rooms.providers import chat_lookup, chat_send
from rooms.shards import SHARDS_EXCHANGE, shard_queue

logger = logging.getLogger(__name__)

Status = RoomMessage.Status

TICK_EVERY_S = 1.0
# How often the owner compares each room's last sequence in the database with what it
# knows: the only way it learns of a message whose `enqueued` input was never published
# (RabbitMQ away when the enqueue committed).
CATCH_UP_EVERY_S = 10.0
# A message younger than this is left to its input, which is on its way.
CATCH_UP_GRACE_S = 2.0
# Idle rooms kept in memory (a few hundred bytes each); beyond, the longest idle go.
IDLE_ROOMS = 100_000
# How often an owner holding more than its share of the shards hands one over.
BALANCE_EVERY_S = 1.0
# An owner whose last tick was sent this long ago is no longer counted among the owners
# (by the tick's own time: a tick may wait in its queue behind a backlog, and outlive its owner).
OWNER_SILENT_S = 3.0
# A mark published to a shard and not read back after this long is published again (a
# tick sent without a confirm may be lost).
MARK_AGAIN_S = 5.0
PROVIDERS_EVERY_S = 10.0


class FencedError(Exception):
    """Another owner took one of this owner's shards: this one must stop writing."""


@dataclass(frozen=True)
class Outcome:
    """What a platform call answered, handed from a sending thread to the main loop."""

    send: Send
    kind: str  # "sent", "absent" (a lookup found nothing), "refused", "transient"
    value: str = ""  # the platform's message id, or the reason
    at: datetime = field(default_factory=timezone.now)  # when the platform answered


class Owner:
    def __init__(
        self, *, name: str | None = None, prefetch: int = 2000, send_threads: int = 32,
        catch_up_every: float = CATCH_UP_EVERY_S, idle_rooms: int = IDLE_ROOMS,
        balance_every: float = BALANCE_EVERY_S,
    ) -> None:
        self.name = name or f"{socket.gethostname()}:{os.getpid()}"
        self.catch_up_every = catch_up_every
        self.idle_rooms = idle_rooms
        self.balance_every = balance_every  # 0: never hand a shard over
        self.consumers: dict[int, Consumer] = {}  # shard -> this owner's consumer of its queue
        self.leaving: set[int] = set()  # shards being handed over: no new send for their rooms
        self.peers: dict[str, float] = {}  # other owners -> when they sent their last tick (epoch seconds)
        self.prefetch = prefetch
        self.send_threads = send_threads
        self.machine = Machine()
        self.epochs: dict[int, int] = {}
        # shard -> the highest room id that may have a past this owner does not know: the
        # newest room when it took the shard, or a room it has since let go from memory.
        self.known_before: dict[int, int] = {}
        self.unacked: Message | None = None  # the last input read: acknowledged with all before it
        self.inputs: list[dict[str, Any]] = []  # read, not yet applied
        self.outcomes: queue.SimpleQueue[Outcome] = queue.SimpleQueue()
        self.calling: set[Send] = set()
        self.pool = ThreadPoolExecutor(send_threads, thread_name_prefix="rooms-send")
        # A sending thread with an answer wakes the loop from its wait on RabbitMQ's socket.
        self.wake_read, self.wake_write = socket.socketpair()
        self.wake_read.setblocking(False)
        self.wake_write.setblocking(False)
        self.callback_url = settings.CARILLON_PUBLIC_URL.rstrip("/") + "/api/webhooks/chat/"
        self.next_tick = self.next_catch_up = self.next_providers = 0.0
        self.next_balance = time.monotonic() + OWNER_SILENT_S  # once the other owners' ticks came
        self.ticks: Producer | None = None  # publishes ticks and marks
        self.read_upto: dict[int, float] = {}  # shard -> send time of its last tick of ours read back
        self.marked: dict[int, float] = {}  # shard -> send time of the last mark published to it
        self.waiting: dict[int, deque[Due]] = {}  # shard -> ack timeouts due, waiting for its mark

    # -- the loop ----------------------------------------------------------------------

    def run(self, stop: threading.Event, ready: Callable[[], None] = lambda: None) -> None:
        """Own shards until `stop` is set. `ready` is called each time the owner consumes
        the shard queues.

        When RabbitMQ or the database goes away, or another owner took one of its shards,
        the owner lets go of everything and starts again: closing its connection returns
        its unacknowledged inputs to their queues, for whichever owner RabbitMQ gives the
        shards to next (a standby, or this one once it is back), which reads the record.
        """
        broker = critical_app.connection_for_read()  # not connected: for its error classes
        lost = (*broker.connection_errors, *broker.channel_errors, KombuError, OSError, DatabaseError, FencedError)
        while not stop.is_set():
            try:
                # Ticks go on a connection of their own without publisher confirms: a
                # confirm from a quorum queue waits for its log to reach the disk, and
                # sixteen of them a second stalled the loop for a fifth of its time. A
                # lost tick is harmless: the next comes a second later.
                with critical_app.connection_for_read(heartbeat=10) as connection, \
                        critical_app.connection_for_write(transport_options={"confirm_publish": False}) as unconfirmed:
                    connection.ensure_connection(max_retries=1)
                    unconfirmed.ensure_connection(max_retries=1)
                    self._serve(connection, unconfirmed, stop, ready)
            except lost as exc:
                logger.warning("rooms owner %s: letting go of its shards and starting again: %r", self.name, exc)
                self._release()
                db_connection.close()
                stop.wait(1.0)
        self.close()

    def close(self) -> None:
        """Wait for the calls in progress, then free the sending threads and the wake-up
        sockets."""
        self.pool.shutdown(wait=True)
        self.wake_read.close()
        self.wake_write.close()

    def _serve(self, connection: Any, unconfirmed: Any, stop: threading.Event, ready: Callable[[], None]) -> None:
        channel = connection.channel()
        channel.basic_qos(0, self.prefetch, False)
        self.ticks = Producer(unconfirmed.channel(), exchange=SHARDS_EXCHANGE, serializer="json")
        for shard in range(SHARDS):
            self._consume(channel, shard)
        logger.info("rooms owner %s: consuming the shard queues", self.name)
        ready()
        while not stop.is_set():
            self._read(connection)
            # Answers before inputs: an ack read in this pass may be for a send whose
            # answer is already here, and the send is recorded before its ack.
            self._take_outcomes()
            self._apply_inputs()
            self._fire_timers()
            self._flush()
            self._periodic(connection)
            self._balance(channel)
        # A clean stop: record what the calls in progress answered, then let go of the
        # shards (the standby owners take them at once).
        self._drain_calls()
        self._take_outcomes()
        self._flush()
        for consumer in self.consumers.values():
            consumer.cancel()

    def _consume(self, channel: Any, shard: int) -> None:
        """Consume a shard's queue: its active consumer if no other owner is, else waiting
        for its turn."""
        consumer = Consumer(channel, queues=[shard_queue(shard)], accept=["json"])
        consumer.register_callback(lambda body, message: self._on_input(consumer, shard, body, message))
        # Known before it consumes: the inputs of the shards already consumed keep coming
        # while RabbitMQ confirms this consumer, and one of this shard's may come at once.
        self.consumers[shard] = consumer
        consumer.consume()

    def _read(self, connection: Any) -> None:
        """Read what RabbitMQ has for us. With nothing there, wait until something comes,
        a sending thread has an answer, or the next timer is due; not by polling: a 2 ms
        poll while calls were out cost the owner a wake-up 500 times a second, and each
        answer up to 2 ms before the loop took it."""
        sock = connection.connection.sock
        buffered = _buffered(sock)
        # poll(), not select(): select() refuses a descriptor numbered past 1023, and an
        # owner keeps platform connections by the dozen per provider.
        poller = select.poll()
        poller.register(sock, select.POLLIN)
        poller.register(self.wake_read, select.POLLIN)
        ready = {fd for fd, _ in poller.poll(0 if buffered else self._idle_wait() * 1000)}
        if self.wake_read.fileno() in ready:
            try:
                self.wake_read.recv(4096)
            except BlockingIOError:
                pass
        if sock.fileno() in ready or buffered:
            try:
                for _ in range(self.prefetch):  # everything already on the socket, without waiting
                    connection.drain_events(timeout=0.0002)
            except TimeoutError:
                pass

    def _idle_wait(self) -> float:
        if not self.machine.timers:
            return 0.05
        until = (self.machine.timers[0].at - timezone.now()).total_seconds()
        return min(max(until, 0.0005), 0.05)

    # -- inputs ------------------------------------------------------------------------

    def _on_input(self, consumer: Consumer, shard: int, body: dict[str, Any], message: Message) -> None:
        if self.consumers.get(shard) is not consumer:
            # Delivered to the consumer this owner cancelled to hand the shard over, before
            # RabbitMQ confirmed the cancel: back to the queue, for the shard's next owner.
            message.reject(requeue=True)
            return
        self.unacked = message
        self.inputs.append(body)

    def _apply_inputs(self) -> None:
        """Apply the inputs read, in their order, once the shards they come from are taken
        and the rooms of their messages that the owner does not hold are read back (in
        one read for all of them)."""
        inputs, self.inputs = self.inputs, []
        for body in inputs:
            if int(body["shard"]) not in self.epochs:
                self._take(int(body["shard"]))
        unheld: dict[int, tuple[RoomState, int]] = {}
        for body in inputs:
            if body.get("kind") == "enqueued" and int(body["room"]) not in self.machine.rooms \
                    and int(body["room"]) <= self.known_before[int(body["shard"])]:
                room, upto = unheld.get(int(body["room"]), (_room_state(body), 0))
                unheld[room.room_id] = (room, max(upto, int(body["sequence"])))
        if unheld:
            self._adopt(unheld.values())
        now = timezone.now()
        for body in inputs:
            kind = body.get("kind")
            if kind == "enqueued":
                self._enqueued(body, now)
            elif kind == "ack":
                self.machine.acked(int(body["room"]), str(body["key"]), str(body.get("provider_message_id") or ""),
                                   now)
            elif kind == "skip":
                self.machine.skip(int(body["room"]), int(body["message"]), now)
            elif kind == "retry":
                self.machine.retry(int(body["room"]), int(body["message"]), now)
            elif kind == "tick":
                owner, sent_at = str(body.get("owner") or ""), float(body.get("sent_at") or 0.0)
                if owner == self.name:
                    shard = int(body["shard"])
                    self.read_upto[shard] = max(self.read_upto.get(shard, 0.0), sent_at)
                elif owner:
                    self.peers[owner] = max(self.peers.get(owner, 0.0), sent_at)
            else:
                logger.warning("rooms owner %s: input of unknown kind %r dropped", self.name, kind)

    def _enqueued(self, body: dict[str, Any], now: datetime) -> None:
        """A message committed to a room the owner holds, read back before if it did not,
        or created since the owner took its shard (no past to read: below)."""
        room, sequence = self.machine.rooms.get(int(body["room"])) or _room_state(body), int(body["sequence"])
        self._ensure_provider(room.provider_id)
        self._catch_up(room, sequence - 1)
        self.machine.enqueued(room, Queued(sequence, int(body["message"]), str(body["key"]), str(body["body"])), now)

    def _adopt(self, rooms: Iterable[tuple[RoomState, int]]) -> None:
        """Hold rooms the owner does not, each told of up to a sequence: read their queued
        and in-flight messages up to it, in one read for all of them. Every message up to
        that sequence is then known (done, or read), so that an input repeated after its
        message ended changes nothing, however long ago the owner last held the room."""
        wanted = {room.room_id: (room, upto) for room, upto in rooms}
        messages: dict[int, list[dict[str, Any]]] = defaultdict(list)
        for row in _pending(RoomMessage.objects.filter(room_id__in=list(wanted))):
            if row["sequence"] <= wanted[row["room_id"]][1]:
                messages[row["room_id"]].append(row)
        now = timezone.now()
        for room_id, (room, upto) in wanted.items():
            self._ensure_provider(room.provider_id)
            room.known = upto
            for send in self.machine.load(room, messages.get(room_id, ()), now):
                self._call(send)

    def _catch_up(self, room: RoomState, upto: int) -> None:
        """Read from the database the messages of a room the owner holds that it has not
        seen, up to `upto`."""
        known = room.known
        if upto <= known:
            return
        rows = RoomMessage.objects.filter(room_id=room.room_id, sequence__gt=known, sequence__lte=upto).order_by(
            "sequence").values("id", "sequence", "idempotency_key", "body", "status")
        now = timezone.now()
        for row in rows:
            queued = Queued(row["sequence"], row["id"], str(row["idempotency_key"]), row["body"])
            if row["status"] == Status.QUEUED:
                self.machine.enqueued(room, queued, now)
        room.known = max(room.known, upto)

    # -- taking and losing shards ------------------------------------------------------

    def _take(self, shard: int) -> None:
        now = timezone.now()
        with transaction.atomic():
            RoomShard.objects.get_or_create(shard=shard)
            RoomShard.objects.filter(shard=shard).update(epoch=F("epoch") + 1, owner=self.name, taken_at=now)
            epoch = RoomShard.objects.values_list("epoch", flat=True).get(shard=shard)
        self.epochs[shard] = epoch
        # A room created after this (a higher id: ids only grow) has no past for this
        # owner to read back on its first input: no other owner can have written a send
        # for it, since the epoch just taken fences theirs, and this one holds it from its
        # first message on, until it lets it go from memory (`_flush` raises this bound).
        self.known_before[shard] = Room.objects.aggregate(newest=Max("id"))["newest"] or 0
        # Shards change hands when an owner starts, stops or dies: hand none over until
        # the ticks have told who is still there (else a dead owner's last ticks would
        # have shards handed back and forth to this very owner, the only one waiting).
        self.next_balance = max(self.next_balance, time.monotonic() + OWNER_SILENT_S)
        self._load_providers()
        # The rooms with messages queued or in flight, in one read: a room's messages are
        # numbered and committed in order, so a message committed after it has a higher
        # sequence than any read, and arrives as an input. The rooms left out are idle,
        # and read back by their next message.
        messages: dict[int, list[dict[str, Any]]] = defaultdict(list)
        for row in _pending(RoomMessage.objects.filter(room__shard=shard)):
            messages[row["room_id"]].append(row)
        doubt: list[Send] = []
        for room_id, rows in messages.items():
            state = RoomState(room_id, shard, rows[0]["room__provider_id"], rows[0]["room__recipient"], known=0)
            doubt += self.machine.load(state, rows, now)
        logger.info("rooms owner %s: took shard %s at epoch %s (%s rooms with messages, %s sends in doubt)",
                    self.name, shard, epoch, len(messages), len(doubt))
        for send in doubt:
            self._call(send)

    def _balance(self, channel: Any) -> None:
        """Hand a shard over when this owner holds more than its share: the shards divided
        among the owners whose ticks came in the last seconds. One at a time, so that the
        counts settle between moves."""
        clock = time.monotonic()
        if not self.balance_every or clock < self.next_balance:
            return
        self.next_balance = clock + self.balance_every
        now = time.time()
        self.peers = {owner: at for owner, at in self.peers.items() if now - at < OWNER_SILENT_S}
        owners = 1 + len(self.peers)
        if len(self.epochs) > math.ceil(SHARDS / owners):
            shard = max(self.epochs)
            self._hand_over(shard, channel)
            logger.info("rooms owner %s: handed shard %s over (%s owners, holding %s shards)", self.name, shard,
                        owners, len(self.epochs))

    def _hand_over(self, shard: int, channel: Any) -> None:
        """Let the next owner waiting on a shard's queue have it. Everything decided is
        written first, with no send made for the shard's rooms meanwhile (one recorded
        but not made is in doubt for the next owner, which asks the platform before
        sending it), and the inputs read are acknowledged; then this owner's consumer is
        cancelled, RabbitMQ makes the next one active, and this owner waits in line."""
        self.leaving.add(shard)
        self._drain_calls()
        self._take_outcomes()
        self._flush()
        self.consumers.pop(shard).cancel()
        self.machine.let_go(shard)
        del self.epochs[shard]
        del self.known_before[shard]
        self.leaving.discard(shard)
        self._consume(channel, shard)

    def _release(self) -> None:
        """Forget every shard (the connection that held them is gone): wait for the calls
        in progress, so that none lands after a new owner read the record."""
        self._drain_calls()
        self.consumers = {}
        self.leaving.clear()  # a hand-over that failed half way: its shard is gone too
        # Read on the connection now gone: RabbitMQ gives them again to whichever owner
        # consumes their shard next. Applied here, they would make this one take shards
        # it no longer receives the inputs of.
        self.inputs = []
        self.machine = Machine()
        self.outcomes = queue.SimpleQueue()
        self.epochs.clear()
        self.known_before.clear()
        self.unacked = None
        self.waiting, self.read_upto, self.marked = {}, {}, {}

    # -- the group commit --------------------------------------------------------------

    def _flush(self) -> None:
        record = self.machine.take_record()
        if record.shards:  # rows to write (a retry's send alone writes nothing)
            now = timezone.now()
            with transaction.atomic():
                if _fence(now, {shard: self.epochs[shard] for shard in record.shards}) != len(record.shards):
                    raise FencedError(f"one of shards {sorted(record.shards)} was taken by another owner")
                _rows_update(RoomMessage, record.messages)
                rooms: dict[int, dict[str, Any]] = {room_id: {} for room_id in record.timeouts}
                rooms.update(record.rooms)
                # `version` counts the writes of a room's state (shown by the room's API).
                written = _rows_update(Room, rooms, "version = version + 1, timeouts = timeouts + %s",
                                       lambda room_id: [record.timeouts.get(room_id, 0)])
                # Fewer rows than rooms: some were deleted (with their messages) while the
                # owner held them. Every new send writes its room, so forgetting them here
                # keeps the owner from sending their queued messages.
                gone = set() if written == len(rooms) else set(rooms) - set(
                    Room.objects.filter(pk__in=list(rooms)).values_list("pk", flat=True))
            for room_id in gone:
                logger.warning("rooms owner %s: room %s was deleted; its queued messages are dropped",
                               self.name, room_id)
                self.machine.forget(room_id)
        if self.unacked is not None:
            self.unacked.ack(multiple=True)
            self.unacked = None
        for room in self.machine.evict(self.idle_rooms):  # their state is written
            # Its next input is read back, repeats of inputs already applied included.
            self.known_before[room.shard] = max(self.known_before[room.shard], room.room_id)
        for send in record.sends:
            self._call(send)

    # -- calls to the platform ---------------------------------------------------------

    def _call(self, send: Send) -> None:
        """Send (or, for a send in doubt, look up) one attempt, in a sending thread."""
        flight = self.machine.current(send)
        if flight is None or send in self.calling:
            return
        room = self.machine.room_of(send)
        if room.shard in self.leaving:
            return  # handed over: in doubt for the next owner
        self.calling.add(send)
        if flight.doubt:
            self.pool.submit(self._lookup, send, flight.message.key)
            return
        # The ack's webhook names the shard and room it is for, so that the web process
        # hands it to this owner's queue without reading the database.
        callback_url = f"{self.callback_url}?shard={room.shard}&room={room.room_id}"
        self.pool.submit(self._send, send, room.recipient, flight.message, callback_url)

    def _send(self, send: Send, recipient: str, message: Queued, callback_url: str) -> None:
        self._answer(send, lambda: chat_send(
            room=recipient, body=message.body, idempotency_key=message.key,
            sequence=message.sequence, callback_url=callback_url,
        ).provider_message_id)

    def _lookup(self, send: Send, key: str) -> None:
        self._answer(send, lambda: chat_lookup(idempotency_key=key))

    def _answer(self, send: Send, call: Callable[[], str | None]) -> None:
        try:
            found = call()
            outcome = Outcome(send, "absent") if found is None else Outcome(send, "sent", found)
        except ProviderPermanentError as exc:
            outcome = Outcome(send, "refused", str(exc))
        except Exception as exc:  # noqa: BLE001 - the loop retries any other failure with backoff
            outcome = Outcome(send, "transient", str(exc) or type(exc).__name__)
        self.outcomes.put(outcome)
        if outcome.kind == "sent":
            # Only the record changes (when it was sent, the platform's id) and the ack
            # timeout is armed from `at`: the loop takes it on its next pass (an input, a
            # timer, 50 ms at most), and writes it with that pass's commit. Woken for it,
            # the loop made a commit per send, and the saturated throughput fell by a
            # fifth (bench ordered, 2,000 rooms: 85 against 104-112 messages/s).
            return
        try:
            self.wake_write.send(b"\0")
        except BlockingIOError:
            pass  # the loop has wake-ups waiting already

    def _take_outcomes(self) -> None:
        while True:
            try:
                outcome = self.outcomes.get_nowait()
            except queue.Empty:
                return
            self.calling.discard(outcome.send)
            if outcome.kind == "sent":
                self.machine.sent(outcome.send, outcome.value, outcome.at)
            elif outcome.kind == "absent":
                self.machine.absent(outcome.send)
            elif outcome.kind == "refused":
                logger.warning("room %s: message %s refused: %s", outcome.send.room_id, outcome.send.message_id,
                               outcome.value)
                self.machine.refused(outcome.send, outcome.value, outcome.at)
            else:
                logger.warning("room %s: message %s not sent, to try again: %s", outcome.send.room_id,
                               outcome.send.message_id, outcome.value)
                self.machine.failed_transiently(outcome.send, outcome.value, outcome.at)

    def _drain_calls(self) -> None:
        """Wait for the platform calls in progress to answer (each is bounded by its
        timeout), keeping their outcomes for the machine."""
        answered = []
        while self.calling:
            try:
                outcome = self.outcomes.get(timeout=settings.ROOMS_CHAT_API_TIMEOUT_SECONDS + 5)
            except queue.Empty:
                break
            self.calling.discard(outcome.send)
            answered.append(outcome)
        for outcome in answered:
            self.outcomes.put(outcome)

    # -- timers and periodic work ------------------------------------------------------

    def _fire_timers(self) -> None:
        """Fire the timers due; an ack timeout only once its shard's queue was read past
        its deadline (module docstring), asking for a mark where none is on its way. The
        timeouts waiting for a shard are kept in deadline order, so each pass looks only
        at the front of each shard's line, however many wait behind a backlog."""
        now = timezone.now()
        timers = self.machine.timers
        while timers and timers[0].at <= now:
            due = heapq.heappop(timers)
            shard = self._waits_for(due)
            if shard is None:
                self.machine.fire(due, now)
            else:
                self.waiting.setdefault(shard, deque()).append(due)  # popped in deadline order
        for shard, line in self.waiting.items():
            read_upto = self.read_upto.get(shard, 0.0)
            while line and line[0].at.timestamp() <= read_upto:
                self.machine.fire(line.popleft(), now)  # "stale" for a message no longer in flight
            if line:
                self._mark(shard)

    def _waits_for(self, due: Due) -> int | None:
        """The shard whose queue an ack timeout waits to read past; None to fire it now
        (a send to retry, or a timeout whose message is no longer in flight)."""
        if due.timer is not Timer.ACK_TIMEOUT:
            return None
        send = Send(due.room_id, due.message_id, due.attempt)
        if self.machine.current(send) is None:
            return None
        return self.machine.room_of(send).shard

    def _mark(self, shard: int) -> None:
        """Publish a mark to a shard unless one is on its way: one at a time per shard.
        Once it is read back, the timeouts it serves fire, and the next one due asks for
        the next mark; behind a backlog that is one mark per pass over the backlog,
        however many timeouts fall due meanwhile."""
        marked = self.marked.get(shard, 0.0)
        if marked > self.read_upto.get(shard, 0.0) and time.time() - marked < MARK_AGAIN_S:
            return
        self.marked[shard] = self._tick(shard)

    def _tick(self, shard: int) -> float:
        """Publish a tick to a shard; return the time it names. No expiry: a tick that
        waits behind a backlog is still the mark of its time when it is read (they are
        few, and read by whichever owner holds the shard)."""
        if self.ticks is None:
            raise RuntimeError("ticks are published only while the owner serves")
        sent_at = time.time()
        queue_ = shard_queue(shard)
        self.ticks.publish({"kind": "tick", "shard": shard, "owner": self.name, "sent_at": sent_at},
                           routing_key=queue_.routing_key, declare=[queue_], retry=False)
        return sent_at

    def _periodic(self, connection: Any) -> None:
        clock = time.monotonic()
        if clock >= self.next_tick:
            self.next_tick = clock + TICK_EVERY_S
            connection.heartbeat_check()  # a RabbitMQ that stopped answering fails here
            for shard in range(SHARDS):
                self._tick(shard)
        if clock >= self.next_providers:
            self.next_providers = clock + PROVIDERS_EVERY_S
            self._load_providers()
            close_old_connections()
        if clock >= self.next_catch_up and self.epochs:
            self.next_catch_up = clock + self.catch_up_every
            self._catch_up_all()

    def _catch_up_all(self) -> None:
        """Find the messages whose input never came (RabbitMQ away when the enqueue
        committed, or its process killed in between): in the rooms of this owner's shards
        with a message queued for a while, beyond what the owner knows. One grouped read
        of the queued messages: it costs what is queued, however many rooms there are."""
        queued = RoomMessage.objects.filter(
            status=Status.QUEUED, room__shard__in=list(self.epochs),
            enqueued_at__lt=timezone.now() - timedelta(seconds=CATCH_UP_GRACE_S),
        ).order_by().values("room_id", "room__shard", "room__provider_id", "room__recipient").annotate(
            upto=Max("sequence"))
        unheld = []
        for row in queued:
            room = self.machine.rooms.get(row["room_id"])
            if room is None:
                unheld.append((RoomState(row["room_id"], row["room__shard"], row["room__provider_id"],
                                         row["room__recipient"], known=0), row["upto"]))
            elif room.known < row["upto"]:
                self._catch_up(room, row["upto"])
        if unheld:
            self._adopt(unheld)

    def _load_providers(self) -> None:
        self.machine.providers = {provider.pk: provider_config(provider) for provider in ChatProvider.objects.all()}

    def _ensure_provider(self, provider_id: int) -> None:
        if provider_id not in self.machine.providers:
            self._load_providers()


def _buffered(sock: Any) -> bool:
    """Whether TLS holds decrypted bytes the socket no longer shows as readable. (Without
    TLS nothing is held back: the AMQP client reads the socket a frame at a time, exactly.)"""
    return isinstance(sock, ssl.SSLSocket) and sock.pending() > 0


def _room_state(body: dict[str, Any]) -> RoomState:
    """The room an `enqueued` input names, before the owner knows any of its messages."""
    return RoomState(int(body["room"]), int(body["shard"]), int(body["provider"]), str(body["recipient"]), known=0)


def _pending(messages: "QuerySet[RoomMessage]") -> list[dict[str, Any]]:
    """The queued and in-flight messages among `messages`, by room and sequence, with
    what the machine loads a room from."""
    rows = messages.filter(status__in=(Status.QUEUED, Status.IN_FLIGHT)).order_by("room_id", "sequence").values(
        "id", "room_id", "sequence", "idempotency_key", "body", "status", "attempts", "sent_at",
        "provider_message_id", "room__provider_id", "room__recipient")
    return [dict(row) for row in rows]


def _fence(now: datetime, epochs: dict[int, int]) -> int:
    """Mark the shards written at `now` where each still has the epoch this owner took it
    at; return how many did. One statement for every shard a commit touches (a round trip
    each cost the loop more than the rows themselves), in plain SQL (the ORM's version of
    it took a third of a small commit's time)."""
    pairs = ", ".join(["(%s, %s)"] * len(epochs))
    table, quote = RoomShard._meta.db_table, db_connection.ops.quote_name
    with db_connection.cursor() as cursor:
        cursor.execute(
            f"UPDATE {quote(table)} SET flushed_at = %s WHERE (shard, epoch) IN ({pairs})",  # noqa: S608
            [RoomShard._meta.get_field("flushed_at").get_db_prep_save(now, db_connection),
             *[value for pair in epochs.items() for value in pair]],
        )
        return int(cursor.rowcount)


def _rows_update(
    model: Any, changes: dict[int, dict[str, Any]], extra_sql: str = "",
    extra_params: Callable[[int], list[Any]] = lambda pk: [],
) -> int:
    """Write each row's changed fields: one statement per set of fields changed together,
    executed for all its rows at once (pipelined on PostgreSQL). Plain SQL: building the
    same UPDATEs as ORM expressions (bulk_update's CASE per field and row) took three
    quarters of an owner's CPU. Return how many rows were written."""
    groups: dict[tuple[str, ...], list[int]] = defaultdict(list)
    for pk, changed in changes.items():
        groups[tuple(sorted(changed))].append(pk)
    quote = db_connection.ops.quote_name
    written = 0
    with db_connection.cursor() as cursor:
        for names, pks in groups.items():
            fields: list[Any] = [model._meta.get_field(name) for name in names]  # "in_flight_id" finds in_flight
            assignments = [f"{quote(field.column)} = %s" for field in fields] + ([extra_sql] if extra_sql else [])
            # Identifiers from the model's metadata, every value a parameter.
            sql = f"UPDATE {quote(model._meta.db_table)} SET {', '.join(assignments)} WHERE id = %s"  # noqa: S608
            rows = [
                [field.get_db_prep_save(changes[pk][name], db_connection)
                 for name, field in zip(names, fields, strict=True)] + extra_params(pk) + [pk]
                for pk in pks
            ]
            # A row alone (the common case below saturation) is cheaper without the
            # pipeline psycopg sets up for executemany.
            if len(rows) == 1:
                cursor.execute(sql, rows[0])
            else:
                cursor.executemany(sql, rows)
            # The sum over the rows for executemany, on SQLite and on psycopg alike.
            written += cursor.rowcount
    return written
