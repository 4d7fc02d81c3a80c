"""Sending deliveries: one subscriber's work for one event (or one chunk of a broadcast),
a Delivery row per recipient, each handed to its channel's provider once."""

import logging
import uuid
from collections import Counter, defaultdict
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from datetime import datetime
from typing import Any, NamedTuple

from django.contrib.auth import get_user_model
from django.db import IntegrityError, transaction
from django.db.models import F
from django.utils import timezone

from core.errors import ProviderError, ProviderPermanentError, ProviderTransientError
from core.rows import rows_create, rows_insert
from core.send_rate import send_rate_back_off, send_rate_configured, send_rate_take
from notifications.events import EventType, event_type_get
from notifications.exceptions import BatchPending, InvalidEvent
from notifications.models import Delivery, DeliveryChunk, Event
from notifications.providers.base import SendItem, SendResult
from notifications.providers.senders import BATCH_SENDERS, SENDERS
from notifications.selectors import preferences_disabled, preferences_disabled_each
from notifications.services.broadcasts import broadcast_plan
from notifications.services.delivery_status import (
    FINAL_STATUSES,
    deliveries_mark_sent,
)
from notifications.subscribers import Subscriber, event_user, subscriber_get

logger = logging.getLogger(__name__)


def delivery_send(
    *, event_id: str, subscriber_name: str, chunk: int | None = None, waited: bool = False
) -> list[Delivery]:
    """Do one subscriber's work for one event: one Delivery per recipient, each sent once.

    An event addressed to an audience is planned into chunks here (each its own task,
    `chunk` its index), and each chunk sends its recipients together.
    Safe to run again (a redelivered or retried message): finished deliveries are left
    alone, and one whose earlier attempt died mid-send is checked with the provider, or
    resent with the same idempotency key. Raises ProviderTransientError (retry: only what
    is unfinished is sent again), ProviderPermanentError (recipients the provider refused:
    a failed job), BatchPending or SendRateExceeded (run again later, not a failure).
    `waited` says this run was already put off once for an analytics batch.
    """
    event = Event.objects.get(pk=event_id)
    subscriber = subscriber_get(subscriber_name)
    if event.audience is not None and chunk is None:
        broadcast_plan(event=event, subscriber=subscriber)
        return []
    if chunk is None:
        users = list(subscriber.recipients(event))
    else:
        ids = DeliveryChunk.objects.get(broadcast__event=event, broadcast__subscriber=subscriber.name, index=chunk).user_ids
        users = list(get_user_model().objects.filter(pk__in=ids).order_by("pk"))
    event_type = event_type_get(name=event.type, version=event.version)
    off = _preferences_off(event_type, subscriber, users)
    skip_reason = _skip_reason(event_type, subscriber)
    # Sent at once (no batch window, no send rate to wait for, not cancelled): a new
    # delivery is created in the state its first attempt puts it in, not marked after.
    at_once = (subscriber.channel not in BATCH_SENDERS and event.cancelled_at is None
               and send_rate_configured(subscriber.channel) is None)
    deliveries, born = _deliveries_open(event, subscriber, users, off=off, skip_reason=skip_reason, attempted=at_once)
    if event.cancelled_at is not None:
        Delivery.objects.filter(pk__in=[d.pk for d in deliveries], status=Delivery.Status.PENDING).update(
            status=Delivery.Status.CANCELLED, last_error="the event was cancelled"
        )
        return deliveries
    to_send = _preferences_apply([d for d in deliveries if d.status not in FINAL_STATUSES], off, skip_reason)
    if subscriber.channel in BATCH_SENDERS:
        refused = BATCH_SENDERS[subscriber.channel](to_send, waited=waited)
    else:
        by_pk = {user.pk: user for user in users}
        refused = _deliveries_attempt(event, subscriber.channel, [(d, by_pk[d.user_id]) for d in to_send], born)
    # Refused for good, now or by an earlier run of this task: a failed job keeps them,
    # and its replay sends only these.
    refused += [(d.pk, d.last_error) for d in deliveries if d.status == Delivery.Status.FAILED]
    if refused:
        lines = "; ".join(f"delivery {pk}: {error}" for pk, error in refused[:10])
        raise ProviderPermanentError(f"{len(refused)} of {len(deliveries)} deliveries refused: {lines}")
    return deliveries


class Work(NamedTuple):
    """One event's work for one subscriber; `waited`: it was put off once already."""

    event_id: str
    subscriber: str
    waited: bool = False


@dataclass(frozen=True)
class PutOff:
    """A work not done yet, to run again in `seconds`: its delivery waits to join an
    analytics batch."""

    seconds: int


def deliveries_send_together(*, works: Sequence[tuple[str, str] | Work]) -> list[bool | PutOff]:
    """Do several (event, subscriber) works at once, each for the event's own user: the
    transactional case when a worker holds many messages. One read of the events, one of
    their users, one of their preferences, one insert, one send per channel
    (one SMTP session for every email, one Mixpanel request for the analytics events),
    one record of the sends. Answer, for each work, whether it is done, or when to run it
    again (PutOff).

    Analytics go to Mixpanel in batches: a lone analytics delivery is written and put off
    for its batch window (`analytics_deliver`), and its work comes back `waited`, to be
    flushed with whatever analytics the batch it lands in holds; two or more in one batch
    are a batch already, and go at once.

    A work that is not done is left to `delivery_send`, run alone, which knows every other
    case and retries or records failures: an audience, a send rate to respect, a cancelled
    event, a recipient missing, a delivery that an earlier run created (other than a
    waited analytics delivery), or one that did not end sent or skipped here (refused, or
    to retry).
    """
    todo = [Work(*work) for work in works]
    keys = [_uuid(work.event_id) for work in todo]
    events = Event.objects.in_bulk([key for key in keys if key])
    planned: dict[int, tuple[Event, Subscriber, EventType]] = {}
    waited: dict[int, tuple[Event, Subscriber]] = {}
    for index, (key, work) in enumerate(zip(keys, todo, strict=True)):
        event, subscriber = events.get(key) if key else None, _subscriber_or_none(work.subscriber)
        if event is None or subscriber is None or not _sent_together(event, subscriber):
            continue
        if not work.waited:
            planned[index] = (event, subscriber, event_type_get(name=event.type, version=event.version))
        elif subscriber.channel in BATCH_SENDERS:
            waited[index] = (event, subscriber)
    user_ids = {index: event.data.get("user_id") for index, (event, _, _) in planned.items()}
    users = get_user_model().objects.in_bulk([pk for pk in user_ids.values() if isinstance(pk, int)])
    planned = {index: work for index, work in planned.items() if user_ids[index] in users}

    # Who switched each (category, channel) off among these works: one read.
    asked: dict[tuple[str, str], list[int]] = defaultdict(list)
    for index, (_, subscriber, event_type) in planned.items():
        if not event_type.mandatory:
            asked[(event_type.category, subscriber.channel)].append(user_ids[index])
    off = preferences_disabled_each(asked)
    now = timezone.now()
    deliveries = {
        index: _delivery_new(
            event, subscriber, user_ids[index], off=off.get((event_type.category, subscriber.channel), set()),
            skip_reason=_skip_reason(event_type, subscriber),
            attempted_at=now if subscriber.channel in SENDERS else None,
        )
        for index, (event, subscriber, event_type) in planned.items()
    }
    try:
        rows_insert(list(deliveries.values()))
    except IntegrityError:
        return [False] * len(works)  # a rerun of some work: each goes alone, finding its rows

    by_channel: dict[str, list[SendItem]] = defaultdict(list)
    for index, delivery in deliveries.items():
        if delivery.status == Delivery.Status.SENDING:
            event, subscriber, _ = planned[index]
            by_channel[subscriber.channel].append(
                SendItem(event=event, delivery=delivery, user=users[user_ids[index]], in_doubt_since=None))
    items: list[SendItem] = []
    results: list[SendResult | ProviderError] = []
    for channel, group in by_channel.items():  # one SMTP session, one insert of notifications...
        items += group
        results += SENDERS[channel](items=group)
    sent = _outcomes_record(items, results, [])[0]
    deliveries |= _waited_deliveries(waited)
    batched = [d for d in deliveries.values() if d.channel in BATCH_SENDERS and d.status not in FINAL_STATUSES]
    batch_sent, later = _batch_senders_deliver(batched, waited={deliveries[index].pk for index in waited
                                                                if index in deliveries})
    sent |= batch_sent
    answers: list[bool | PutOff] = []
    for index in range(len(todo)):
        row = deliveries.get(index)
        if row is not None and row.pk in later:
            answers.append(PutOff(later[row.pk]))
        else:
            answers.append(row is not None and (row.status in (Delivery.Status.SKIPPED, Delivery.Status.SENT)
                                                or row.pk in sent))
    return answers


def _waited_deliveries(waited: dict[int, tuple[Event, Subscriber]]) -> dict[int, Delivery]:
    """The deliveries of the waited works, which their first run wrote (one read); a work
    whose delivery is missing is left to its task."""
    if not waited:
        return {}
    rows = Delivery.objects.filter(event__in=[event for event, _ in waited.values()],
                                   subscriber__in={subscriber.name for _, subscriber in waited.values()})
    by_work = {(row.event_id, row.subscriber): row for row in rows}
    return {index: by_work[(event.pk, subscriber.name)] for index, (event, subscriber) in waited.items()
            if (event.pk, subscriber.name) in by_work}


def _batch_senders_deliver(batched: list[Delivery], *, waited: set[int]) -> tuple[set[int], dict[int, int]]:
    """Hand the batch's unfinished deliveries of batching channels (analytics) to their
    sender; answer those it sent, and those it put off (to run again in so many seconds).
    Fresh ones wait for their window, however many the batch holds, unless a full
    request's worth is pending: a flush sends the oldest pending of every batch, so the
    copy that comes back first sends the others' too, in requests as full as the window
    allows. (Sending whenever a batch held two made Mixpanel requests of four on average
    at 300 deliveries a second, a sixth of the worker's CPU.) A batch holding one that
    has waited sends now. Those it refused or could not send are left to their tasks."""
    sent: set[int] = set()
    later: dict[int, int] = {}
    for channel in {delivery.channel for delivery in batched}:
        own = [delivery for delivery in batched if delivery.channel == channel]
        go_now = any(delivery.pk in waited for delivery in own)
        try:
            refused = {pk for pk, _ in BATCH_SENDERS[channel](own, waited=go_now)}
        except BatchPending as exc:
            # Flushed, yet some are held by another flush: those it did send are done.
            gone = set(Delivery.objects.filter(pk__in=[d.pk for d in own], status=Delivery.Status.SENT)
                       .values_list("pk", flat=True)) if go_now else set()
            sent |= gone
            later |= {delivery.pk: exc.retry_after for delivery in own if delivery.pk not in gone}
            continue
        except ProviderTransientError as exc:
            logger.info("%s: %d deliveries left to their tasks: %s", channel, len(own), exc)
            continue
        sent |= {delivery.pk for delivery in own if delivery.pk not in refused}
    return sent, later


def _uuid(value: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(value)
    except (TypeError, ValueError):
        return None


def _sent_together(event: Event, subscriber: Subscriber) -> bool:
    """Whether `deliveries_send_together` can do this work: one recipient named by the
    event, sent at once."""
    return (event.audience is None and event.cancelled_at is None and subscriber.recipients is event_user
            and send_rate_configured(subscriber.channel) is None)


def _skip_reason(event_type: EventType, subscriber: Subscriber) -> str:
    return f"{subscriber.channel} is off for {event_type.category}"


def _subscriber_or_none(name: str) -> Subscriber | None:
    try:
        return subscriber_get(name)
    except InvalidEvent:
        return None


def _deliveries_open(
    event: Event, subscriber: Subscriber, users: list[Any], *, off: set[int], skip_reason: str, attempted: bool
) -> tuple[list[Delivery], set[int]]:
    """The Delivery of each user, in the users' order: created, or the one an earlier run
    of this work created; and the keys of those created here as attempted.

    A new delivery is created skipped if its user switched the channel off, else as
    attempted now (`attempted`: it is sent right after) or pending.
    """
    now = timezone.now()
    deliveries = rows_create(
        [_delivery_new(event, subscriber, user.pk, off=off, skip_reason=skip_reason, attempted_at=now if attempted else None)
         for user in users],
        key=lambda delivery: delivery.recipient,
        stored=lambda: Delivery.objects.filter(
            event=event, subscriber=subscriber.name, recipient__in=[f"user:{user.pk}" for user in users]
        ),
    )
    # One this run created carries its `now`; one an earlier run left "sending" (its
    # attempt may have reached the provider) carries that run's.
    born = {d.pk for d in deliveries if attempted and d.status == Delivery.Status.SENDING and d.attempt_started_at == now}
    return deliveries, born


def _delivery_new(
    event: Event, subscriber: Subscriber, user_id: int, *, off: set[int], skip_reason: str,
    attempted_at: datetime | None,
) -> Delivery:
    """A new delivery: skipped if its user switched the channel off, else attempted at
    `attempted_at` (it is sent right after) or pending."""
    delivery = Delivery(event=event, subscriber=subscriber.name, recipient=f"user:{user_id}",
                        channel=subscriber.channel, user_id=user_id)
    if user_id in off:
        delivery.status, delivery.last_error = Delivery.Status.SKIPPED, skip_reason
    elif attempted_at is not None:
        delivery.status, delivery.attempts, delivery.attempt_started_at = Delivery.Status.SENDING, 1, attempted_at
    return delivery


def _preferences_off(event_type: EventType, subscriber: Subscriber, users: list[Any]) -> set[int]:
    """The users who switched this channel off for the category (one read). Mandatory
    categories skip nobody."""
    if event_type.mandatory or not users:
        return set()
    return preferences_disabled(user_ids=[user.pk for user in users], category=event_type.category,
                                channel=subscriber.channel)


def _preferences_apply(deliveries: list[Delivery], off: set[int], skip_reason: str) -> list[Delivery]:
    """Skip the unfinished deliveries an earlier run created whose users have switched the
    channel off since (one update, only then); answer the rest."""
    skipped = [d.pk for d in deliveries if d.user_id in off]
    if skipped:
        Delivery.objects.filter(pk__in=skipped).update(status=Delivery.Status.SKIPPED, last_error=skip_reason)
    return [d for d in deliveries if d.user_id not in off]


def _deliveries_attempt(
    event: Event, channel: str, to_send: list[tuple[Delivery, Any]], born: set[int]
) -> list[tuple[int, str]]:
    """Send the deliveries, at most a second's worth of the channel's rate at a time,
    recording each outcome; answer those refused for good (now failed). Raises
    ProviderTransientError if some must be tried again (the others are recorded first),
    SendRateExceeded if the provider or the rate asks to wait."""
    rate = send_rate_configured(channel)
    step = int(rate.burst) if rate else len(to_send)
    transient: list[ProviderTransientError] = []
    refused: list[tuple[int, str]] = []
    for start in range(0, len(to_send), max(step, 1)):
        piece = to_send[start : start + step]
        if rate is not None:
            send_rate_take(name=channel, rate=rate, count=len(piece))
        if start and Event.objects.filter(pk=event.pk, cancelled_at__isnull=False).exists():
            # Cancelled while this chunk was being sent at the channel's pace: the rest is not.
            Delivery.objects.filter(pk__in=[d.pk for d, _ in to_send[start:]]).update(
                status=Delivery.Status.CANCELLED, last_error="the event was cancelled"
            )
            break
        items = _attempts_begin(event, piece, born)
        results = SENDERS[channel](items=items)
        transient += _outcomes_record(items, results, refused)[1]
        paused = max((exc.retry_after or 0 for exc in transient), default=0)
        if paused:
            send_rate_back_off(name=channel, seconds=paused)
    if transient:
        raise ProviderTransientError(
            f"{len(transient)} of {len(to_send)} deliveries to retry: {transient[0]}", in_doubt=transient[0].in_doubt
        )
    return refused


def _attempts_begin(event: Event, piece: list[tuple[Delivery, Any]], born: set[int]) -> list[SendItem]:
    """Mark attempts under way (one update; none for deliveries `born` attempted); each
    item carries when its previous attempt began if that one may have reached the
    provider (it died, or timed out, "sending")."""
    begun = [delivery.pk for delivery, _ in piece if delivery.pk not in born]
    if begun:
        Delivery.objects.filter(pk__in=begun).update(
            status=Delivery.Status.SENDING, attempts=F("attempts") + 1, attempt_started_at=timezone.now()
        )
    return [
        SendItem(event=event, delivery=delivery, user=user,
                 in_doubt_since=delivery.attempt_started_at
                 if delivery.status == Delivery.Status.SENDING and delivery.pk not in born else None)
        for delivery, user in piece
    ]


def _outcomes_record(
    items: list[SendItem], results: list[SendResult | ProviderError], refused: list[tuple[int, str]],
) -> tuple[set[int], list[ProviderTransientError]]:
    """Record each delivery's outcome in one commit (the sent ones in one statement); add
    those refused for good to `refused`; answer the keys of those sent, and the transient
    errors met."""
    # One item's outcome is a single statement already: no transaction of its own.
    with transaction.atomic() if len(items) > 1 else nullcontext():
        return _outcomes_write(items, results, refused)


def _outcomes_write(
    items: list[SendItem], results: list[SendResult | ProviderError], refused: list[tuple[int, str]],
) -> tuple[set[int], list[ProviderTransientError]]:
    transient: list[ProviderTransientError] = []
    sent = {item.delivery.pk: result for item, result in zip(items, results, strict=True) if isinstance(result, SendResult)}
    if sent:
        deliveries_mark_sent(sent)
        for (event_id, channel), count in Counter((item.delivery.event_id, item.delivery.channel) for item in items
                                                  if item.delivery.pk in sent).items():
            logger.info("event %s: %s sent to %d recipients", event_id, channel, count)
    for item, result in zip(items, results, strict=True):
        pk = item.delivery.pk
        if isinstance(result, SendResult):
            continue
        if isinstance(result, ProviderTransientError):
            # Certainly not taken: back to pending. Perhaps taken: stay "sending", so the
            # next attempt checks with the provider first.
            status = Delivery.Status.SENDING if result.in_doubt else Delivery.Status.PENDING
            Delivery.objects.filter(pk=pk).update(status=status, last_error=str(result), provider_response=result.response)
            transient.append(result)
        else:
            Delivery.objects.filter(pk=pk).update(
                status=Delivery.Status.FAILED, last_error=str(result), provider_response=result.response
            )
            refused.append((pk, str(result)))
            logger.warning("delivery %s of event %s: %s refused: %s", pk, item.delivery.event_id, item.delivery.channel,
                           result)
    return set(sent), transient
