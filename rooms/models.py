"""Rooms: one conversation with one external recipient on one chat provider, whose
outbound messages reach the provider strictly one after the other.

The state of a room lives in the memory of its shard's owner process (rooms/owner.py);
these rows are its record, written by the owner's group commits and read back by the
next owner: `in_flight` and `attempt` say which message the provider holds, `version`
counts the writes of the room's state (docs/ordered-delivery.md).
"""

import uuid
import zlib

from django.conf import settings
from django.db import models

# Rooms are spread over a fixed number of shards, each owned by one sequencer process at
# a time (rooms/owner.py). Fixed: a room's shard is stored with it, and the shard queues
# on RabbitMQ are named by number.
SHARDS = 16


def room_shard(*, provider_id: int, recipient: str) -> int:
    """The shard of a room: a stable hash of what identifies it, known before its insert."""
    return zlib.crc32(f"{provider_id}:{recipient}".encode()) % SHARDS


class ChatProvider(models.Model):
    """A chat platform's ack behaviour: how long to wait for an ack, and what then."""

    class TimeoutPolicy(models.TextChoices):
        PROCEED = "proceed", "count as sent and move on"
        RESEND = "resend", "resend idempotently up to max_resends times, then move on"

    name = models.SlugField(unique=True)
    ack_timeout_ms = models.PositiveIntegerField(default=2000)
    timeout_policy = models.CharField(max_length=16, choices=TimeoutPolicy, default=TimeoutPolicy.PROCEED)
    max_resends = models.PositiveSmallIntegerField(default=2)

    def __str__(self) -> str:
        return self.name


class Room(models.Model):
    provider = models.ForeignKey(ChatProvider, on_delete=models.PROTECT, related_name="rooms")
    recipient = models.CharField(max_length=255, help_text="The recipient's address on the provider.")
    # Room ids are sequential, so the API cannot trust a caller who names one: only the
    # owner (the integration that created the room) reads and sends into it, and
    # operators by permission. No owner: a room of the project's own code.
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="rooms",
        help_text="The API user (integration) the room belongs to; it alone may read it and send into it.",
    )
    # The state machine: idle when in_flight is null.
    in_flight = models.OneToOneField(
        "RoomMessage", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    attempt = models.PositiveSmallIntegerField(default=0)
    version = models.PositiveBigIntegerField(default=0)
    last_ack_at = models.DateTimeField(null=True, blank=True)
    timeouts = models.PositiveIntegerField(default=0)
    created_at = models.DateTimeField(auto_now_add=True)
    # The shard whose owner sequences the room; set when the room is created.
    shard = models.PositiveSmallIntegerField(db_index=True, editable=False, default=0)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["provider", "recipient"], name="room_unique_recipient"),
        ]
        permissions = [
            # Skipping or resending changes what a recipient receives: not every staff member.
            ("operate_room", "Can skip or retry a room's in-flight message"),
            # Reading any room is rooms.view_room; sending into a room one does not own is this.
            ("send_room_message", "Can send messages into any room through the API"),
        ]

    def __str__(self) -> str:
        return f"room {self.pk} ({self.provider_id}:{self.recipient})"

    def save(self, *args: object, **kwargs: object) -> None:
        if self._state.adding:
            self.shard = room_shard(provider_id=self.provider_id, recipient=self.recipient)
        super().save(*args, **kwargs)  # type: ignore[arg-type]


class RoomShard(models.Model):
    """Who owns a shard of rooms now: the record an owner process fences its writes with.

    An owner that takes a shard bumps `epoch` and reads the shard's rooms back; every
    write of its state checks the epoch it took in the same transaction, so an owner
    that lost the shard (stalled, then replaced) writes nothing and stops.
    """

    shard = models.PositiveSmallIntegerField(primary_key=True)
    epoch = models.PositiveBigIntegerField(default=0)
    owner = models.CharField(max_length=255, blank=True, help_text="host:pid of the owner process")
    taken_at = models.DateTimeField(null=True, blank=True)
    flushed_at = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return f"shard {self.shard} (epoch {self.epoch}, {self.owner or 'no owner'})"


class RoomSequence(models.Model):
    """The number of a room's last message. Apart from the room's row, which its owner
    writes at each send: an enqueue holds this row's lock until it commits (that is what
    makes sequences gapless and committed in order), and on the room's row that lock
    made the owner's group commit wait for enqueues in progress."""

    room = models.OneToOneField(Room, primary_key=True, on_delete=models.CASCADE, related_name="sequence")
    last_sequence = models.PositiveBigIntegerField(default=0)

    def __str__(self) -> str:
        return f"room {self.room_id}: #{self.last_sequence}"


class RoomMessage(models.Model):
    class Status(models.TextChoices):
        QUEUED = "queued"
        IN_FLIGHT = "in_flight"
        ACKED = "acked"
        TIMED_OUT = "timed_out", "timed out (counted as sent)"
        SKIPPED = "skipped", "skipped by an operator"
        FAILED = "failed", "refused by the provider"

    # No index of its own: the unique (room, sequence) index serves every lookup by room.
    room = models.ForeignKey(Room, on_delete=models.CASCADE, related_name="messages", db_index=False)
    sequence = models.PositiveBigIntegerField()
    body = models.TextField()
    # Sent with every attempt: the provider drops a repeat, so a resend is never a duplicate.
    idempotency_key = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    status = models.CharField(max_length=16, choices=Status, default=Status.QUEUED)
    attempts = models.PositiveSmallIntegerField(default=0)
    provider_message_id = models.CharField(max_length=255, blank=True)
    enqueued_at = models.DateTimeField(auto_now_add=True)
    dispatched_at = models.DateTimeField(null=True, blank=True)
    sent_at = models.DateTimeField(null=True, blank=True)
    acked_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    note = models.CharField(max_length=255, blank=True)
    # The caller's own idempotency key (the API's `idempotency_key`, not the provider's
    # key above): a retried POST gets the first message back instead of a second copy.
    # Blank: none given. Unique per caller: `request_scope` is "user:<id>" ("" for the project's own code),
    # a string rather than a foreign key so that it outlives the user's row.
    request_scope = models.CharField(max_length=50, blank=True, editable=False)
    request_key = models.CharField(max_length=200, blank=True, editable=False)

    class Meta:
        ordering = ["room", "sequence"]
        constraints = [
            models.UniqueConstraint(fields=["room", "sequence"], name="room_message_unique_sequence"),
            models.UniqueConstraint(
                fields=["request_scope", "request_key"], condition=~models.Q(request_key=""),
                name="room_message_unique_request_key",
            ),
        ]
        # Every change of a message's status rewrites its entry in every index (PostgreSQL
        # cannot update a row in place when an indexed column changes), and a message
        # changes status two or three times: so as few indexes as the reads need. This
        # one serves every read by status (the owners' of unfinished messages, operators'
        # filters). Not partial: SQLite uses a partial index only for a query that
        # repeats its condition word for word, and `status = 'queued'` would not.
        indexes = [models.Index(fields=["status", "room", "sequence"], name="room_message_status")]

    def __str__(self) -> str:
        return f"room {self.room_id} #{self.sequence}"
