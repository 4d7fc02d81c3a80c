"""Rooms: one conversation with one external recipient on one chat provider, whose
outbound messages reach the provider strictly one after the other.

The room row is the state machine (docs/ordered-delivery.md): `in_flight` and `attempt`
say which message the provider holds now, `version` is bumped by every transition, and
every transition is a conditional UPDATE on the version it read (compare-and-set).
"""

import uuid

from django.db import models


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
    # The state machine: idle when in_flight is null.
    in_flight = models.OneToOneField(
        "RoomMessage", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    attempt = models.PositiveSmallIntegerField(default=0)
    version = models.PositiveBigIntegerField(default=0)
    last_sequence = models.PositiveBigIntegerField(default=0)
    last_ack_at = models.DateTimeField(null=True, blank=True)
    timeouts = models.PositiveIntegerField(default=0)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["provider", "recipient"], name="room_unique_recipient"),
        ]
        # Skipping or resending changes what a recipient receives: not every staff member.
        permissions = [("operate_room", "Can skip or retry a room's in-flight message")]

    def __str__(self) -> str:
        return f"room {self.pk} ({self.provider_id}:{self.recipient})"


class RoomMessage(models.Model):
    class Status(models.TextChoices):
        QUEUED = "queued"
        IN_FLIGHT = "in_flight"
        ACKED = "acked"
        TIMED_OUT = "timed_out", "timed out (counted as sent)"
        SKIPPED = "skipped", "skipped by an operator"
        FAILED = "failed", "refused by the provider"

    room = models.ForeignKey(Room, on_delete=models.CASCADE, related_name="messages")
    sequence = models.PositiveBigIntegerField()
    body = models.TextField()
    # Sent with every attempt: the provider drops a repeat, so a resend is never a duplicate.
    idempotency_key = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    status = models.CharField(max_length=16, choices=Status, default=Status.QUEUED, db_index=True)
    attempts = models.PositiveSmallIntegerField(default=0)
    provider_message_id = models.CharField(max_length=255, blank=True)
    enqueued_at = models.DateTimeField(auto_now_add=True)
    dispatched_at = models.DateTimeField(null=True, blank=True)
    sent_at = models.DateTimeField(null=True, blank=True)
    acked_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    note = models.CharField(max_length=255, blank=True)

    class Meta:
        ordering = ["room", "sequence"]
        constraints = [
            models.UniqueConstraint(fields=["room", "sequence"], name="room_message_unique_sequence"),
        ]
        indexes = [models.Index(fields=["room", "status", "sequence"])]

    def __str__(self) -> str:
        return f"room {self.room_id} #{self.sequence}"
