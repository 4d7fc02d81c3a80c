"""Writes of the notifications app: publishing events, sending deliveries, user choices."""

import hashlib
import json
import logging
import uuid
from datetime import datetime, timedelta
from functools import partial
from typing import Any

from django.conf import settings
from django.core.serializers.json import DjangoJSONEncoder
from django.db import IntegrityError, transaction
from django.db.models import Case, F, Q, Value, When
from django.utils import timezone

from core.errors import ProviderPermanentError, ProviderTransientError
from notifications.channels import Channel
from notifications.events import Envelope, event_data_validate, event_type_get
from notifications.exceptions import BatchPending, FailedJobStateError, IdempotencyKeyReused
from notifications.models import (
    Delivery,
    Event,
    FailedJob,
    FailedJobAction,
    Notification,
    OutboxMessage,
    Preference,
    ProviderCallback,
    Recipient,
)
from notifications.providers.analytics import analytics_send_batch
from notifications.providers.senders import SENDERS
from notifications.queues import channel_queue_name, delivery_task_name
from notifications.relay import outbox_publish
from notifications.selectors import event_for_key, idempotency_scope, preference_enabled
from notifications.subscribers import subscriber_get, subscribers_for

logger = logging.getLogger(__name__)


def event_envelope(event: Event) -> Envelope:
    return Envelope(
        id=str(event.id),
        type=event.type,
        version=event.version,
        occurred_at=event.occurred_at.isoformat(),
        actor=event.actor,
        data=event.data,
        idempotency_key=event.idempotency_key,
    )


def event_publish(
    *,
    type: str,  # noqa: A002 - the envelope's own field name
    data: dict[str, Any],
    version: int | None = None,
    actor: str = "",
    idempotency_key: str | None = None,
    occurred_at: datetime | None = None,
    publisher_id: int | None = None,
) -> Event:
    """Validate an event and write it with its outbox rows in the caller's transaction.

    The rows are published right after commit; if that fails (broker down, process
    killed), the relay publishes them later. A rolled-back transaction publishes nothing.
    `publisher_id` is the API user publishing (None: the project's own code). A key the
    same publisher already used returns the first event and writes nothing, or raises
    IdempotencyKeyReused if this request differs from the first.
    """
    event_type = event_type_get(name=type, version=version)
    clean_data = event_data_validate(event_type, data)
    request_hash = _request_hash(
        type=type, version=version, data=clean_data, actor=actor, occurred_at=occurred_at
    )
    if idempotency_key:
        existing = event_for_key(publisher_id=publisher_id, key=idempotency_key)
        if existing is not None:
            return _same_request(existing, request_hash)
    try:
        with transaction.atomic():
            event = Event.objects.create(
                type=event_type.name,
                version=event_type.version,
                data=clean_data,
                actor=actor,
                publisher_id=publisher_id,
                idempotency_key=idempotency_key or None,
                idempotency_scope=idempotency_scope(publisher_id),
                request_hash=request_hash,
                occurred_at=occurred_at or timezone.now(),
            )
            outbox = _outbox_rows(event)
    except IntegrityError:
        # The same key published concurrently: the other transaction won.
        existing = event_for_key(publisher_id=publisher_id, key=idempotency_key) if idempotency_key else None
        if existing is None:
            raise
        return _same_request(existing, request_hash)
    ids = [row.pk for row in outbox]
    transaction.on_commit(partial(outbox_publish, ids=ids), robust=True)
    logger.info("event %s %s written with %d outbox rows", event.id, event.type, len(ids))
    return event


def _request_hash(
    *, type: str, version: int | None, data: dict[str, Any], actor: str, occurred_at: datetime | None  # noqa: A002
) -> str:
    """What a publishing request asked for, as a hash (its idempotency key left out)."""
    request = {
        "type": type, "version": version, "data": data, "actor": actor,
        "occurred_at": occurred_at.isoformat() if occurred_at else None,
    }
    canonical = json.dumps(request, sort_keys=True, separators=(",", ":"), cls=DjangoJSONEncoder)
    return hashlib.sha256(canonical.encode()).hexdigest()


def _same_request(first: Event, request_hash: str) -> Event:
    """The first event of a repeated key, if the repeat asks for the same thing (Stripe's
    rule: a key names one request; reusing it for another is a client bug, not a retry)."""
    # Events from before request hashes were kept have none to compare.
    if first.request_hash and first.request_hash != request_hash:
        raise IdempotencyKeyReused(
            f"idempotency key {first.idempotency_key!r} was used for another request (event {first.id}): "
            "use a new key for a new event",
            detail={"idempotency_key": first.idempotency_key, "event": str(first.id)},
        )
    return first


def _outbox_rows(event: Event) -> list[OutboxMessage]:
    rows = [OutboxMessage(event=event, kind=OutboxMessage.Kind.ENVELOPE, payload=dict(event_envelope(event)))]
    for subscriber in subscribers_for(event.type):
        rows.append(
            OutboxMessage(
                event=event,
                kind=OutboxMessage.Kind.TASK,
                subscriber=subscriber.name,
                queue=channel_queue_name(subscriber.channel),
                payload={
                    "task": delivery_task_name(subscriber.channel),
                    "args": [str(event.id), subscriber.name],
                    "queue": channel_queue_name(subscriber.channel),
                },
            )
        )
    # bulk_create sets primary keys on SQLite 3.35+ and PostgreSQL.
    return OutboxMessage.objects.bulk_create(rows)


# --- Deliveries ---------------------------------------------------------------------------

FINAL_STATUSES = frozenset(
    {
        Delivery.Status.SENT,
        Delivery.Status.DELIVERED,
        Delivery.Status.UNDELIVERED,
        Delivery.Status.FAILED,
        Delivery.Status.SKIPPED,
    }
)
# Provider callbacks only move a delivery forward: a late "sent" never undoes "delivered".
STATUS_RANK = {
    Delivery.Status.PENDING: 0,
    Delivery.Status.SENDING: 1,
    Delivery.Status.SENT: 2,
    Delivery.Status.DELIVERED: 3,
    Delivery.Status.UNDELIVERED: 3,
    Delivery.Status.FAILED: 3,
}


def delivery_send(*, event_id: str, subscriber_name: str, waited: bool = False) -> list[Delivery]:
    """Do one subscriber's work for one event: one Delivery per recipient, each sent once.

    Safe to run again for the same event and subscriber (a redelivered or retried
    message): finished deliveries are left alone, and one whose earlier attempt died
    mid-send is checked with the provider, or resent with the same idempotency key.
    Raises ProviderTransientError (retry), ProviderPermanentError (give up), or, for
    analytics, BatchPending (run again later: the deliveries wait for their batch).
    `waited` says this run was already put off once for a batch.
    """
    event = Event.objects.get(pk=event_id)
    subscriber = subscriber_get(subscriber_name)
    event_type = event_type_get(name=event.type, version=event.version)
    deliveries, to_send = [], []
    for user in subscriber.recipients(event):
        delivery, _ = Delivery.objects.get_or_create(
            event=event,
            subscriber=subscriber.name,
            recipient=f"user:{user.pk}",
            defaults={"channel": subscriber.channel, "user_id": user.pk},
        )
        deliveries.append(delivery)
        if delivery.status in FINAL_STATUSES:
            continue
        if not event_type.mandatory and not preference_enabled(
            user_id=user.pk, category=event_type.category, channel=subscriber.channel
        ):
            Delivery.objects.filter(pk=delivery.pk).update(
                status=Delivery.Status.SKIPPED, last_error=f"{subscriber.channel} is off for {event_type.category}"
            )
            continue
        to_send.append((delivery, user))
    if subscriber.channel == Channel.ANALYTICS:
        _analytics_deliver([delivery for delivery, _ in to_send], waited=waited)
    else:
        for delivery, user in to_send:
            _delivery_attempt(delivery=delivery, event=event, user=user, channel=subscriber.channel)
    return deliveries


def _delivery_attempt(*, delivery: Delivery, event: Event, user: Any, channel: str) -> None:
    in_doubt_since = _delivery_begin_attempt(delivery)
    try:
        result = SENDERS[channel](delivery=delivery, event=event, user=user, in_doubt_since=in_doubt_since)
    except ProviderTransientError as exc:
        # Certainly not taken: back to pending. Perhaps taken: stay "sending", so the
        # next attempt checks with the provider first.
        status = Delivery.Status.SENDING if exc.in_doubt else Delivery.Status.PENDING
        Delivery.objects.filter(pk=delivery.pk).update(
            status=status, last_error=str(exc), provider_response=exc.response
        )
        raise
    except ProviderPermanentError as exc:
        Delivery.objects.filter(pk=delivery.pk).update(
            status=Delivery.Status.FAILED, last_error=str(exc), provider_response=exc.response
        )
        raise
    _delivery_mark_sent(Q(pk=delivery.pk), provider_message_id=result.provider_message_id, response=result.response)
    logger.info("delivery %s of event %s: %s sent", delivery.pk, event.id, channel)


def _delivery_mark_sent(which: Q, *, provider_message_id: str | None, response: dict[str, Any]) -> int:
    """Record a send. A status callback may already have moved a delivery past "sent":
    only "sending" becomes "sent". `provider_message_id=None` keeps each row's own."""
    sending = Q(status=Delivery.Status.SENDING)
    fields: dict[str, Any] = {
        "status": Case(When(sending, then=Value(Delivery.Status.SENT)), default=F("status")),
        "sent_at": Case(When(sending, then=Value(timezone.now())), default=F("sent_at")),
        "provider_response": response,
        "last_error": "",
        "claim_token": None,
        "claimed_until": None,
    }
    if provider_message_id is not None:
        fields["provider_message_id"] = provider_message_id
    return Delivery.objects.filter(which).update(**fields)


def _analytics_deliver(own: list[Delivery], *, waited: bool) -> None:
    """Analytics go to Mixpanel in batches. A first run leaves its deliveries pending for
    a short window (unless a full batch is waiting), so that one flush sends many; a
    flush claims the oldest pending analytics deliveries of any event. Whoever flushes,
    a task ends only when its own deliveries are sent: if another flush holds them, it
    runs again after that flush's lease."""
    if not own:
        return
    window = settings.CARILLON_ANALYTICS_BATCH_WINDOW_SECONDS
    batch_size = settings.CARILLON_ANALYTICS_BATCH_SIZE
    pending = Delivery.objects.filter(channel=Channel.ANALYTICS, status=Delivery.Status.PENDING)
    if not waited and window > 0 and pending.count() < batch_size:
        raise BatchPending(retry_after=window)
    analytics_flush(limit=batch_size)
    unfinished = Delivery.objects.filter(pk__in=[d.pk for d in own]).exclude(status__in=FINAL_STATUSES)
    if unfinished.exists():
        raise BatchPending(retry_after=settings.CARILLON_OUTBOX_LEASE_SECONDS)


def analytics_flush(*, limit: int) -> int:
    """Send up to `limit` pending analytics deliveries in one request; return how many.

    Rows are leased with a claim token (as outbox rows are), so concurrent flushes never
    send the same row, and a flush that dies leaves its rows to the next one after the
    lease; a resend carries the same $insert_id, which Mixpanel deduplicates.
    """
    now = timezone.now()
    claimable = Q(channel=Channel.ANALYTICS) & (
        Q(status=Delivery.Status.PENDING) | Q(status=Delivery.Status.SENDING, claimed_until__lt=now)
    )
    chosen = list(Delivery.objects.filter(claimable).order_by("pk").values_list("pk", flat=True)[:limit])
    if not chosen:
        return 0
    token = uuid.uuid4()
    Delivery.objects.filter(claimable, pk__in=chosen).update(
        status=Delivery.Status.SENDING,
        claim_token=token,
        claimed_until=now + timedelta(seconds=settings.CARILLON_OUTBOX_LEASE_SECONDS),
        attempts=F("attempts") + 1,
        attempt_started_at=now,
    )
    batch = list(Delivery.objects.filter(claim_token=token).select_related("event"))
    try:
        analytics_send_batch(batch)
    except ProviderTransientError as exc:
        Delivery.objects.filter(claim_token=token).update(
            status=Delivery.Status.PENDING, claim_token=None, claimed_until=None, last_error=str(exc)
        )
        raise
    _delivery_mark_sent(Q(claim_token=token), provider_message_id=None, response={"batch": len(batch)})
    logger.info("analytics: %d deliveries sent in one request", len(batch))
    return len(batch)


def _delivery_begin_attempt(delivery: Delivery) -> datetime | None:
    """Mark an attempt under way; return when the previous one began if it may have
    reached the provider (it died, or timed out, while "sending"). `delivery` is fresh
    from the database."""
    in_doubt_since = delivery.attempt_started_at if delivery.status == Delivery.Status.SENDING else None
    Delivery.objects.filter(pk=delivery.pk).update(
        status=Delivery.Status.SENDING, attempts=F("attempts") + 1, attempt_started_at=timezone.now()
    )
    return in_doubt_since


def delivery_apply_provider_status(
    *, delivery_id: int, provider: str, status: str, payload: dict[str, Any]
) -> Delivery | None:
    """Record a provider's status callback; move the delivery forward, never back.

    Idempotent: the same callback twice records it twice but changes the status once.
    """
    delivery = Delivery.objects.filter(pk=delivery_id).first()
    if delivery is None:
        return None
    ProviderCallback.objects.create(delivery=delivery, provider=provider, status=status, payload=payload)
    new_status = PROVIDER_STATUSES.get(status)
    if new_status is not None:
        lower = [s for s, rank in STATUS_RANK.items() if rank < STATUS_RANK[new_status]]
        Delivery.objects.filter(pk=delivery_id, status__in=lower).update(status=new_status)
    if payload.get("MessageSid"):
        Delivery.objects.filter(pk=delivery_id, provider_message_id="").update(
            provider_message_id=payload["MessageSid"]
        )
    delivery.refresh_from_db()
    return delivery


# Twilio's message statuses, as Carillon's delivery statuses.
PROVIDER_STATUSES = {
    "sent": Delivery.Status.SENT,
    "delivered": Delivery.Status.DELIVERED,
    "undelivered": Delivery.Status.UNDELIVERED,
    "failed": Delivery.Status.FAILED,
}


def failed_job_record(
    *,
    task_name: str,
    task_id: str,
    queue: str,
    args: list[Any],
    error: BaseException,
    traceback: str,
    attempts: int,
    source: str = "task",
    critical: bool = True,
) -> tuple[FailedJob, bool]:
    """Keep a job that will not succeed by retrying, with what an operator needs to
    replay it; say whether it is new. Recorded once per task id: a dead-letter drain
    finding the same message later adds nothing."""
    event_id, subscriber_name = (args + [None, None])[:2] if isinstance(args, list) else (None, None)
    event = Event.objects.filter(pk=event_id).first() if _is_uuid(event_id) else None
    delivery = (
        Delivery.objects.filter(event=event, subscriber=subscriber_name).order_by("pk").first() if event else None
    )
    failed_job, created = FailedJob.objects.get_or_create(
        dedup_key=task_id or None,
        defaults={
            "task_name": task_name,
            "task_id": task_id,
            "queue": queue,
            "args": args,
            "event": event,
            "delivery": delivery,
            "error_class": type(error).__name__,
            "error_message": str(error),
            "traceback": traceback,
            "attempts": attempts,
            "source": source,
            "critical": critical,
        },
    )
    if created:
        logger.error("failed job %s: task %s %s gave up: %s", failed_job.pk, task_name, task_id, error)
    return failed_job, created


def _is_uuid(value: object) -> bool:
    try:
        uuid.UUID(str(value))
    except ValueError:
        return False
    return True


# --- Failed jobs ---------------------------------------------------------------------------


def failed_job_replay(*, failed_job_id: int, user_id: int | None) -> FailedJob:
    """Send a failed job again through the normal path: an outbox row, published after
    commit. Its deliveries that failed are re-opened; those that in fact succeeded stay
    done, so a job that had gone through sends nothing new."""
    with transaction.atomic():
        failed_job = FailedJob.objects.select_for_update().get(pk=failed_job_id)
        if failed_job.state != FailedJob.State.FAILED:
            raise FailedJobStateError(f"failed job {failed_job_id} is already {failed_job.state}")
        if failed_job.event is None or len(failed_job.args) != 2:
            raise FailedJobStateError(f"failed job {failed_job_id} names no event to deliver: {failed_job.args!r}")
        event_id, subscriber_name = failed_job.args
        reopened = Delivery.objects.filter(
            event_id=event_id, subscriber=subscriber_name, status=Delivery.Status.FAILED
        ).update(status=Delivery.Status.PENDING, last_error="")
        row = OutboxMessage.objects.create(
            event_id=event_id,
            kind=OutboxMessage.Kind.TASK,
            subscriber=subscriber_name,
            queue=failed_job.queue,
            payload={"task": failed_job.task_name, "args": failed_job.args, "queue": failed_job.queue},
        )
        failed_job.state = FailedJob.State.REPLAYED
        failed_job.save(update_fields=["state"])
        FailedJobAction.objects.create(
            failed_job=failed_job, kind=FailedJobAction.Kind.REPLAY, user_id=user_id,
            outcome=f"re-enqueued (outbox row {row.pk}); {reopened} failed deliveries re-opened",
        )
    transaction.on_commit(partial(outbox_publish, ids=[row.pk]), robust=True)
    logger.info("failed job %s replayed by user %s", failed_job_id, user_id)
    return failed_job


def failed_job_discard(*, failed_job_id: int, user_id: int | None, reason: str) -> FailedJob:
    """Close a failed job without sending it, keeping why."""
    if not reason.strip():
        raise FailedJobStateError("say why the job is discarded")
    with transaction.atomic():
        failed_job = FailedJob.objects.select_for_update().get(pk=failed_job_id)
        if failed_job.state != FailedJob.State.FAILED:
            raise FailedJobStateError(f"failed job {failed_job_id} is already {failed_job.state}")
        failed_job.state = FailedJob.State.DISCARDED
        failed_job.save(update_fields=["state"])
        FailedJobAction.objects.create(
            failed_job=failed_job, kind=FailedJobAction.Kind.DISCARD, user_id=user_id, reason=reason,
            outcome="discarded",
        )
    return failed_job


# --- User choices -------------------------------------------------------------------------


def preference_set(*, user_id: int, category: str, channel: str, enabled: bool) -> Preference:
    """Turn one channel of one event category on or off for a user."""
    preference, _ = Preference.objects.update_or_create(
        user_id=user_id, category=category, channel=channel, defaults={"enabled": enabled}
    )
    return preference


def notification_mark_read(*, user_id: int, notification_id: int | None = None) -> int:
    """Mark one of the user's notifications read, or all of them; return how many changed."""
    unread = Notification.objects.filter(user_id=user_id, read_at__isnull=True)
    if notification_id is not None:
        unread = unread.filter(pk=notification_id)
    return unread.update(read_at=timezone.now())


def digest_frequency_set(*, user_id: int, frequency: str) -> str:
    """Choose how often the user gets a digest email: daily, weekly or off."""
    Recipient.objects.update_or_create(user_id=user_id, defaults={"digest_frequency": frequency})
    return frequency
