"""Publishing events: the Event row, its idempotency, and the outbox rows that carry it
to RabbitMQ after commit."""

import hashlib
import json
import logging
from datetime import datetime
from typing import Any

from django.core.serializers.json import DjangoJSONEncoder
from django.db import IntegrityError, transaction
from django.utils import timezone

from notifications.audiences import audience_validate
from notifications.channels import Lane
from notifications.events import Envelope, event_data_validate, event_type_get
from notifications.exceptions import IdempotencyKeyReused, InvalidEvent
from notifications.models import Event, OutboxMessage
from notifications.queues import channel_queue_name, delivery_task_name
from notifications.relay import outbox_write
from notifications.selectors import event_for_key, idempotency_scope
from notifications.subscribers import subscribers_for

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
    audience: Any = None,
) -> Event:
    """Validate an event and write it with its outbox rows in the caller's transaction.

    The rows are published right after commit; if that fails (broker down, process
    killed), the relay publishes them later. A rolled-back transaction publishes nothing.
    `publisher_id` is the API user publishing (None: the project's own code). A key the
    same publisher already used returns the first event and writes nothing, or raises
    IdempotencyKeyReused if this request differs from the first. `audience` addresses it
    to many users (notifications/audiences.py); a bulk-lane type needs one.
    """
    event_type = event_type_get(name=type, version=version)
    clean_data = event_data_validate(event_type, data)
    scope = idempotency_scope(publisher_id)
    if audience is not None:
        audience = audience_validate(audience, scope=scope)
    elif event_type.lane == Lane.BULK:
        raise InvalidEvent(
            f"{event_type.name} goes to an audience: give audience (users, audience or topic)",
            detail={"audience": ["required for this event type"]},
        )
    request_hash = _request_hash(
        type=type, version=version, data=clean_data, actor=actor, occurred_at=occurred_at, audience=audience
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
                idempotency_scope=scope,
                request_hash=request_hash,
                occurred_at=occurred_at or timezone.now(),
                audience=audience,
            )
            outbox = _outbox_rows(event, lane=event_type.lane)
    except IntegrityError:
        # The same key published concurrently: the other transaction won.
        existing = event_for_key(publisher_id=publisher_id, key=idempotency_key) if idempotency_key else None
        if existing is None:
            raise
        return _same_request(existing, request_hash)
    logger.info("event %s %s written with %d outbox rows", event.id, event.type, len(outbox))
    return event


def _request_hash(
    *, type: str, version: int | None, data: dict[str, Any], actor: str, occurred_at: datetime | None,  # noqa: A002
    audience: Any,
) -> str:
    """What a publishing request asked for, as a hash (its idempotency key left out)."""
    request = {
        "type": type, "version": version, "data": data, "actor": actor,
        "occurred_at": occurred_at.isoformat() if occurred_at else None,
    }
    if audience is not None:  # absent from the hash otherwise: earlier events' hashes still match
        request["audience"] = audience
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


def _outbox_rows(event: Event, *, lane: str) -> list[OutboxMessage]:
    """The event's envelope and one task per subscriber, published once the caller commits."""
    rows = [OutboxMessage(event=event, kind=OutboxMessage.Kind.ENVELOPE, payload=dict(event_envelope(event)))]
    for subscriber in subscribers_for(event.type):
        queue = channel_queue_name(subscriber.channel, lane)
        rows.append(
            OutboxMessage(
                event=event,
                kind=OutboxMessage.Kind.TASK,
                subscriber=subscriber.name,
                queue=queue,
                payload={
                    "task": delivery_task_name(subscriber.channel),
                    "args": [str(event.id), subscriber.name],
                    "queue": queue,
                },
            )
        )
    return outbox_write(rows)
