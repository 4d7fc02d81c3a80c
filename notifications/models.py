"""Events, their outbox, deliveries to subscribers, and what failed."""

import uuid

from django.conf import settings
from django.db import models

from notifications.channels import Channel


class Event(models.Model):
    """A domain event as published: the envelope, kept for its deliveries' trail."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    type = models.CharField(max_length=100, db_index=True)
    version = models.PositiveSmallIntegerField()
    occurred_at = models.DateTimeField()
    actor = models.CharField(max_length=200, blank=True)
    data = models.JSONField()
    # Who published it through the API (null: the project's own code). `actor` is free
    # text the caller chooses, so this, not it, decides who may read the event back.
    publisher = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    # A repeated key returns the first event and publishes nothing. Keys are unique per
    # publisher: `idempotency_scope` is "user:<id>" ("" for the project's own code), a
    # string rather than the foreign key so that it outlives the user's row.
    idempotency_key = models.CharField(max_length=200, null=True, blank=True)  # noqa: DJ001 - null in the envelope
    idempotency_scope = models.CharField(max_length=50, blank=True, editable=False)
    # SHA-256 of the publishing request: the same key with another request is refused
    # rather than answered with this event.
    request_hash = models.CharField(max_length=64, blank=True, editable=False)
    # Who the event is for beyond its data's user_id: {"users": [...]}, {"topic": key} or
    # {"audience": name, "params": {...}} (notifications/audiences.py). Null: the
    # subscribers' own recipients.
    audience = models.JSONField(null=True, blank=True)
    # An operator cancelled it: deliveries not yet sent are not sent.
    cancelled_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        ordering = ["-created_at"]
        permissions = [
            ("publish_event", "Can publish events through the API"),
            ("cancel_event", "Can cancel any event's deliveries not yet sent"),
        ]
        constraints = [
            models.UniqueConstraint(
                fields=["idempotency_scope", "idempotency_key"], condition=models.Q(idempotency_key__isnull=False),
                name="event_unique_idempotency_key",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.type} v{self.version} {self.id}"


class OutboxMessage(models.Model):
    """A message to publish to RabbitMQ, written in the same transaction as its event.

    Published right after commit (fast path) or by the relay (slow path); a claim token
    and lease keep two publishers from taking the same row at once.
    """

    class Kind(models.TextChoices):
        ENVELOPE = "envelope"  # the raw event on the events exchange, for other services
        TASK = "task"  # one subscriber's Celery task on its channel queue

    event = models.ForeignKey(Event, on_delete=models.CASCADE, related_name="outbox")
    kind = models.CharField(max_length=10, choices=Kind.choices)
    # For tasks, whose work and where it goes (blank for envelopes): metrics and the
    # admin find unfinished work per queue by them.
    subscriber = models.CharField(max_length=100, blank=True)
    queue = models.CharField(max_length=200, blank=True, db_index=True)
    # For tasks: {"task": name, "args": [...], "queue": name}; for envelopes: the envelope.
    payload = models.JSONField()
    created_at = models.DateTimeField(auto_now_add=True)
    published_at = models.DateTimeField(null=True, blank=True, db_index=True)
    claim_token = models.UUIDField(null=True, blank=True)
    claimed_until = models.DateTimeField(null=True, blank=True)
    attempts = models.PositiveIntegerField(default=0)
    last_error = models.TextField(blank=True)

    class Meta:
        indexes = [models.Index(fields=["published_at", "id"], name="outbox_unpublished")]

    def __str__(self) -> str:
        return f"outbox {self.pk} {self.kind} for {self.event_id}"


class Delivery(models.Model):
    """One subscriber's work for one recipient of one event: sent once, whatever happens."""

    class Status(models.TextChoices):
        PENDING = "pending"
        SENDING = "sending"  # an attempt is under way, or died: the next one checks first
        SENT = "sent"  # the provider took it
        DELIVERED = "delivered"  # the provider confirmed delivery (callback)
        UNDELIVERED = "undelivered"
        FAILED = "failed"
        SKIPPED = "skipped"  # the recipient switched this channel off
        CANCELLED = "cancelled"  # the event was cancelled before this was sent

    event = models.ForeignKey(Event, on_delete=models.CASCADE, related_name="deliveries")
    subscriber = models.CharField(max_length=100)
    channel = models.CharField(max_length=20, choices=Channel.choices)
    recipient = models.CharField(max_length=200)
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True)
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.PENDING, db_index=True)
    attempts = models.PositiveIntegerField(default=0)
    provider_message_id = models.CharField(max_length=200, blank=True, db_index=True)
    provider_response = models.JSONField(default=dict, blank=True)
    last_error = models.TextField(blank=True)
    claim_token = models.UUIDField(null=True, blank=True)  # analytics batches
    claimed_until = models.DateTimeField(null=True, blank=True)
    attempt_started_at = models.DateTimeField(null=True, blank=True)
    sent_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name_plural = "deliveries"
        constraints = [
            models.UniqueConstraint(fields=["event", "subscriber", "recipient"], name="one_delivery_per_recipient")
        ]

    def __str__(self) -> str:
        return f"{self.subscriber} → {self.recipient} ({self.status})"


class ProviderCallback(models.Model):
    """A status report a provider sent about a delivery (e.g. Twilio's status callback)."""

    delivery = models.ForeignKey(Delivery, on_delete=models.CASCADE, related_name="callbacks")
    provider = models.CharField(max_length=50)
    status = models.CharField(max_length=50)
    payload = models.JSONField()
    received_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["received_at"]

    def __str__(self) -> str:
        return f"{self.provider} {self.status} for delivery {self.delivery_id}"


class FailedJob(models.Model):
    """A job that will not succeed by retrying: kept with everything needed to replay it."""

    class State(models.TextChoices):
        FAILED = "failed"
        REPLAYED = "replayed"
        DISCARDED = "discarded"

    task_name = models.CharField(max_length=200)
    task_id = models.CharField(max_length=200, blank=True)
    queue = models.CharField(max_length=200)
    args = models.JSONField(default=list)
    event = models.ForeignKey(Event, on_delete=models.SET_NULL, null=True, blank=True, related_name="failed_jobs")
    delivery = models.ForeignKey(Delivery, on_delete=models.SET_NULL, null=True, blank=True, related_name="failed_jobs")
    error_class = models.CharField(max_length=200)
    error_message = models.TextField()
    traceback = models.TextField(blank=True)
    attempts = models.PositiveIntegerField(default=0)
    # Where it came from: a task that gave up, or a message found in a dead-letter queue.
    source = models.CharField(max_length=20, default="task")
    # A unique key per failure, so a dead-letter drain run twice records it once.
    dedup_key = models.CharField(max_length=200, unique=True, null=True, blank=True)
    critical = models.BooleanField(default=True)
    state = models.CharField(max_length=20, choices=State.choices, default=State.FAILED, db_index=True)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        ordering = ["-created_at"]
        permissions = [("replay_failedjob", "Can replay or discard failed jobs")]

    def __str__(self) -> str:
        return f"{self.task_name} {self.error_class} ({self.state})"


class FailedJobAction(models.Model):
    """Who replayed or discarded a failed job, when, why, and what came of it."""

    class Kind(models.TextChoices):
        REPLAY = "replay"
        DISCARD = "discard"

    failed_job = models.ForeignKey(FailedJob, on_delete=models.CASCADE, related_name="actions")
    kind = models.CharField(max_length=10, choices=Kind.choices)
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True)
    reason = models.TextField(blank=True)
    outcome = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["created_at"]

    def __str__(self) -> str:
        return f"{self.kind} of failed job {self.failed_job_id}"


class Notification(models.Model):
    """An in-app notification shown to one user."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="notifications")
    delivery = models.OneToOneField(Delivery, on_delete=models.SET_NULL, null=True, blank=True)
    event = models.ForeignKey(Event, on_delete=models.SET_NULL, null=True, blank=True)
    kind = models.CharField(max_length=100)
    title = models.CharField(max_length=200)
    body = models.TextField(blank=True)
    data = models.JSONField(default=dict, blank=True)
    read_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["user", "read_at"], name="notification_unread")]

    def __str__(self) -> str:
        return f"{self.kind} for user {self.user_id}"


class DigestFrequency(models.TextChoices):
    DAILY = "daily"
    WEEKLY = "weekly"
    OFF = "off"


class Recipient(models.Model):
    """How to reach a user beyond Django's User: phone number, digest choice."""

    user = models.OneToOneField(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="recipient")
    phone_number = models.CharField(max_length=20, blank=True, help_text="E.164, e.g. +15551230001")
    # Opt-in: a user who never chose gets no digest email.
    digest_frequency = models.CharField(
        max_length=10, choices=DigestFrequency.choices, default=DigestFrequency.OFF,
        help_text="email a digest of unread in-app notifications daily, weekly, or not at all",
    )

    def __str__(self) -> str:
        return f"recipient {self.user_id}"


class Preference(models.Model):
    """A user's choice for one channel of one event category; no row means on."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="notification_preferences")
    category = models.CharField(max_length=50)
    channel = models.CharField(max_length=20, choices=Channel.choices)
    enabled = models.BooleanField(default=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["user", "category", "channel"], name="one_preference")]

    def __str__(self) -> str:
        return f"{self.category}/{self.channel} {'on' if self.enabled else 'off'} for user {self.user_id}"


class Digest(models.Model):
    """One digest email: a user's unread in-app notifications created in [period_start,
    period_end). Unique per (user, period_end), so a second run of the job sends nothing;
    the next digest starts where this one ended, so no notification is in two digests."""

    class Status(models.TextChoices):
        PENDING = "pending"  # recorded, not yet sent (or the sender died: sent again)
        SENT = "sent"
        EMPTY = "empty"  # nothing unread in the period: no email
        SKIPPED = "skipped"  # the user has no email address

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="digests")
    frequency = models.CharField(max_length=10, choices=DigestFrequency.choices)
    period_start = models.DateTimeField()
    period_end = models.DateTimeField()
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.PENDING)
    notification_count = models.PositiveIntegerField(default=0)
    notification_ids = models.JSONField(default=list, blank=True)
    claimed_until = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    sent_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-period_end"]
        constraints = [models.UniqueConstraint(fields=["user", "period_end"], name="one_digest_per_period")]

    def __str__(self) -> str:
        return f"{self.frequency} digest for user {self.user_id} until {self.period_end:%Y-%m-%d %H:%M}"


class Topic(models.Model):
    """A named audience users are subscribed to ("product-updates", "channel:42:live"):
    an event addressed to it reaches every subscriber at the time it is sent."""

    # Keys are unique per publisher, as idempotency keys are: "user:<id>" for an API
    # publisher, "" for the project's own code. One publisher never sees another's topics.
    scope = models.CharField(max_length=50, blank=True, editable=False)
    key = models.CharField(max_length=100)
    name = models.CharField(max_length=200, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["scope", "key"], name="one_topic_per_key")]

    def __str__(self) -> str:
        return self.key


class TopicSubscription(models.Model):
    topic = models.ForeignKey(Topic, on_delete=models.CASCADE, related_name="subscriptions")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        # Its index also serves reading a topic's recipients in pages of ascending user ids.
        constraints = [models.UniqueConstraint(fields=["topic", "user"], name="one_subscription_per_user")]

    def __str__(self) -> str:
        return f"{self.user_id} → {self.topic_id}"


class Broadcast(models.Model):
    """One subscriber's work for an event addressed to an audience.

    Its recipients are read in pages of ascending user ids; each page becomes a chunk,
    written with its outbox row in one transaction, so every chunk is published exactly
    once and a planner that dies resumes after the last chunk it wrote (`cursor`).
    """

    event = models.ForeignKey(Event, on_delete=models.CASCADE, related_name="broadcasts")
    subscriber = models.CharField(max_length=100)
    channel = models.CharField(max_length=20, choices=Channel.choices)
    cursor = models.BigIntegerField(default=0)  # the last user id put in a chunk
    chunks = models.PositiveIntegerField(default=0)
    recipients = models.PositiveIntegerField(default=0)  # resolved so far
    planned_at = models.DateTimeField(null=True, blank=True)  # every recipient is in a chunk
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["event", "subscriber"], name="one_broadcast_per_subscriber")]

    def __str__(self) -> str:
        return f"{self.subscriber} of {self.event_id}"


class DeliveryChunk(models.Model):
    """Up to CARILLON_BROADCAST_CHUNK_SIZE recipients of a broadcast, sent by one task."""

    broadcast = models.ForeignKey(Broadcast, on_delete=models.CASCADE, related_name="chunk_set")
    index = models.PositiveIntegerField()
    user_ids = models.JSONField()
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["broadcast", "index"], name="one_chunk_per_index")]

    def __str__(self) -> str:
        return f"chunk {self.index} of {self.broadcast}"
