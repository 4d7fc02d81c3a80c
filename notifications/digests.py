"""Digest emails: a user's unread in-app notifications of a period, in one email.

Periods end at midnight in CARILLON_DIGEST_TIME_ZONE (weekly ones on a Monday), computed
on calendar dates, so a 23- or 25-hour day around a daylight-saving change is still one
day. A digest runs from where the user's previous one ended to the latest boundary, so a
run that comes late (or after a skipped day, or after TIME_ZONE changed) covers the whole
gap once, and a second run finds the digest already recorded and sends nothing.
"""

import logging
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import IntegrityError, transaction
from django.db.models import Q
from django.template.loader import render_to_string
from django.utils import timezone

from notifications.models import Digest, DigestFrequency, Notification, Recipient
from notifications.providers.email import email_message_send

logger = logging.getLogger(__name__)

PERIOD_DAYS = {DigestFrequency.DAILY: 1, DigestFrequency.WEEKLY: 7}


def digest_time_zone() -> ZoneInfo:
    return ZoneInfo(settings.CARILLON_DIGEST_TIME_ZONE)


def _local_midnight(day: date) -> datetime:
    return datetime.combine(day, time(0), tzinfo=digest_time_zone())


def digest_period_end(*, frequency: str, now: datetime) -> datetime:
    """The latest period boundary at or before `now`: local midnight (daily), or local
    midnight starting the current Monday (weekly)."""
    today = now.astimezone(digest_time_zone()).date()
    if frequency == DigestFrequency.WEEKLY:
        today -= timedelta(days=today.weekday())
    return _local_midnight(today)


def digest_first_period_start(*, frequency: str, period_end: datetime) -> datetime:
    """Where a user's first digest starts: one period before its end, in local days."""
    end_day = period_end.astimezone(digest_time_zone()).date()
    return _local_midnight(end_day - timedelta(days=PERIOD_DAYS[DigestFrequency(frequency)]))


def digest_prepare(*, user_id: int, now: datetime | None = None) -> Digest | None:
    """Record the user's digest for the latest finished period, if not recorded yet.

    Returns the digest to send (status pending), or None when the user takes no digest,
    the period's digest is already done, or the period held nothing unread.
    """
    now = now or timezone.now()
    recipient = Recipient.objects.filter(user_id=user_id).first()
    if recipient is None or recipient.digest_frequency == DigestFrequency.OFF:
        return None
    frequency = recipient.digest_frequency
    period_end = digest_period_end(frequency=frequency, now=now)
    last = Digest.objects.filter(user_id=user_id).order_by("-period_end").first()
    if last is not None and last.period_end >= period_end:
        # Already recorded; one left pending (its sender died) is sent again.
        return last if last.status == Digest.Status.PENDING and last.period_end == period_end else None
    period_start = (
        last.period_end if last is not None
        else digest_first_period_start(frequency=frequency, period_end=period_end)
    )
    ids = list(
        Notification.objects.filter(
            user_id=user_id, read_at__isnull=True, created_at__gte=period_start, created_at__lt=period_end
        )
        .order_by("created_at", "pk")
        .values_list("pk", flat=True)
    )
    user = get_user_model().objects.get(pk=user_id)
    if not ids:
        status = Digest.Status.EMPTY
    elif not getattr(user, "email", ""):
        status = Digest.Status.SKIPPED
    else:
        status = Digest.Status.PENDING
    try:
        with transaction.atomic():
            digest = Digest.objects.create(
                user_id=user_id, frequency=frequency, period_start=period_start, period_end=period_end,
                status=status, notification_ids=ids, notification_count=len(ids),
            )
    except IntegrityError:
        # Another run recorded this period at the same moment: it sends it.
        return None
    logger.info(
        "digest %s for user %s: %d unread notifications from %s to %s (%s)",
        digest.pk, user_id, len(ids), period_start.isoformat(), period_end.isoformat(), status,
    )
    return digest if status == Digest.Status.PENDING else None


def digest_due_user_ids(*, now: datetime | None = None) -> list[int]:
    """Users who take a digest and have none recorded for their latest period."""
    now = now or timezone.now()
    due = []
    takers = Recipient.objects.exclude(digest_frequency=DigestFrequency.OFF).values_list(
        "user_id", "digest_frequency"
    )
    for user_id, frequency in takers.iterator(chunk_size=500):
        period_end = digest_period_end(frequency=frequency, now=now)
        if not Digest.objects.filter(user_id=user_id, period_end__gte=period_end).exists():
            due.append(user_id)
    return due


def digest_unsent_ids(*, now: datetime | None = None) -> list[int]:
    """Digests recorded but never sent (their sender died or gave up), free to send again."""
    now = now or timezone.now()
    return list(
        Digest.objects.filter(status=Digest.Status.PENDING)
        .filter(Q(claimed_until__isnull=True) | Q(claimed_until__lt=now))
        .values_list("pk", flat=True)
    )


@dataclass(frozen=True)
class DigestItem:
    title: str
    body: str
    created_at: datetime


def message_id(digest: Digest) -> str:
    """Fixed per digest: a resend after a crash is the same message to the mailbox."""
    return f"<digest-{digest.pk}.{digest.user_id}@carillon>"


def digest_send(*, digest_id: int, now: datetime | None = None) -> bool:
    """Send a pending digest once; return whether this call sent it.

    The digest is leased before sending, so two workers never send it at once; a sender
    that dies leaves the lease to expire and the next run sends it again, with the same
    Message-ID. Notifications read since the digest was recorded are left out.
    """
    now = now or timezone.now()
    lease = timedelta(seconds=settings.CARILLON_CLAIM_LEASE_SECONDS)
    claimed = (
        Digest.objects.filter(pk=digest_id, status=Digest.Status.PENDING)
        .filter(Q(claimed_until__isnull=True) | Q(claimed_until__lt=now))
        .update(claimed_until=now + lease)
    )
    if not claimed:
        return False
    digest = Digest.objects.select_related("user").get(pk=digest_id)
    notifications = list(
        Notification.objects.filter(pk__in=digest.notification_ids, read_at__isnull=True).order_by("created_at", "pk")
    )
    if not notifications:
        Digest.objects.filter(pk=digest_id).update(status=Digest.Status.EMPTY, claimed_until=None)
        return False
    try:
        _email_send(digest, notifications)
    except Exception:
        # Free it at once for the retry; a Message-ID fixed per digest keeps a resend of
        # a message the server did take one message.
        Digest.objects.filter(pk=digest_id).update(claimed_until=None)
        raise
    Digest.objects.filter(pk=digest_id).update(
        status=Digest.Status.SENT, sent_at=timezone.now(), notification_count=len(notifications), claimed_until=None
    )
    logger.info("digest %s sent to user %s: %d notifications", digest_id, digest.user_id, len(notifications))
    return True


def _email_send(digest: Digest, notifications: list[Notification]) -> None:
    tz = digest_time_zone()
    context = {
        "user": digest.user,
        "digest": digest,
        "count": len(notifications),
        "period_start": digest.period_start.astimezone(tz),
        "period_end": digest.period_end.astimezone(tz),
        "items": [DigestItem(n.title, n.body, n.created_at.astimezone(tz)) for n in notifications],
    }
    email_message_send(
        to=digest.user.email,
        subject=render_to_string("notifications/digest/subject.txt", context).strip(),
        text=render_to_string("notifications/digest/body.txt", context).strip(),
        html=render_to_string("notifications/digest/body.html", context),
        message_id=message_id(digest),
    )
