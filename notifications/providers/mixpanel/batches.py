"""Which analytics deliveries go to Mixpanel together: a first run waits a short window
for others to join its batch; a flush claims the oldest pending ones, of any event, and
sends them in one request."""

import logging
import uuid
from datetime import timedelta

from django.conf import settings
from django.db.models import F, Q
from django.utils import timezone

from core.errors import ProviderPermanentError, ProviderTransientError
from core.send_rate import send_rate_back_off, send_rate_configured, send_rate_take
from notifications.channels import Channel
from notifications.exceptions import BatchPending
from notifications.models import Delivery
from notifications.providers.mixpanel.sender import analytics_send_batch
from notifications.services.delivery_status import FINAL_STATUSES, delivery_mark_sent

logger = logging.getLogger(__name__)


def analytics_deliver(own: list[Delivery], *, waited: bool) -> list[tuple[int, str]]:
    """Send one run's analytics deliveries (`own`) to Mixpanel in a batch; answer those
    Mixpanel refused for good (now failed), with the reason.

    A first run leaves its deliveries pending for a short window (unless a full batch is
    waiting), so that one flush sends many; a flush claims the oldest pending analytics
    deliveries of any event. Whoever flushes, a task ends only when its own deliveries are
    sent: if another flush holds them, it runs again after that flush's lease (BatchPending).
    """
    if not own:
        return []
    window = settings.CARILLON_ANALYTICS_BATCH_WINDOW_SECONDS
    batch_size = settings.CARILLON_ANALYTICS_BATCH_SIZE
    pending = Delivery.objects.filter(channel=Channel.ANALYTICS, status=Delivery.Status.PENDING)
    if not waited and window > 0 and pending[:batch_size].count() < batch_size:
        raise BatchPending(retry_after=window)
    # A broadcast's chunk holds many batches' worth: flush until its own are sent, or
    # until a flush finds nothing left to claim (another flush holds the rest).
    while True:
        flushed = analytics_flush(limit=batch_size)
        states = list(Delivery.objects.filter(pk__in=[d.pk for d in own]).values_list("pk", "status", "last_error"))
        unfinished = [pk for pk, status, _ in states if status not in FINAL_STATUSES]
        if not flushed or not unfinished:
            break
    if unfinished:
        raise BatchPending(retry_after=settings.CARILLON_CLAIM_LEASE_SECONDS)
    return [(pk, error) for pk, status, error in states if status == Delivery.Status.FAILED]


def analytics_flush(*, limit: int) -> int:
    """Send up to `limit` pending analytics deliveries in one request; return how many.

    Rows are leased with a claim token (as outbox rows are), so concurrent flushes never
    send the same row, and a flush that dies leaves its rows to the next one after the
    lease; a resend carries the same $insert_id, which Mixpanel deduplicates.
    """
    rate = send_rate_configured(Channel.ANALYTICS)
    if rate is not None:
        # For analytics a send is a request, of up to `limit` events. Taken before any
        # row is claimed: work put off for the rate holds none.
        send_rate_take(name=Channel.ANALYTICS, rate=rate)
    now = timezone.now()
    claimable = Q(channel=Channel.ANALYTICS) & (
        Q(status=Delivery.Status.PENDING) | Q(status=Delivery.Status.SENDING, claimed_until__lt=now)
    )
    # Chosen and claimed in one statement; the condition is checked again on each row
    # claimed, so a row another flush claimed meanwhile is left to it.
    oldest = Delivery.objects.filter(claimable).order_by("pk").values("pk")[:limit]
    token = uuid.uuid4()
    claimed = Delivery.objects.filter(claimable, pk__in=oldest).update(
        status=Delivery.Status.SENDING,
        claim_token=token,
        claimed_until=now + timedelta(seconds=settings.CARILLON_CLAIM_LEASE_SECONDS),
        attempts=F("attempts") + 1,
        attempt_started_at=now,
    )
    if not claimed:
        return 0
    batch = list(Delivery.objects.filter(claim_token=token).select_related("event"))
    try:
        refused = analytics_send_batch(batch)
    except ProviderPermanentError as exc:
        # The whole request refused (a wrong secret): sending it again would be too. Each
        # delivery fails, and its task records a failed job to replay once it is fixed.
        refused = {delivery.pk: str(exc) for delivery in batch}
    except ProviderTransientError as exc:
        Delivery.objects.filter(claim_token=token).update(
            status=Delivery.Status.PENDING, claim_token=None, claimed_until=None, last_error=str(exc)
        )
        if exc.retry_after:
            send_rate_back_off(name=Channel.ANALYTICS, seconds=exc.retry_after)
        raise
    by_reason: dict[str, list[int]] = {}
    for pk, reason in refused.items():
        by_reason.setdefault(reason, []).append(pk)
    for reason, pks in by_reason.items():
        Delivery.objects.filter(pk__in=pks, claim_token=token).update(
            status=Delivery.Status.FAILED, last_error=reason, claim_token=None, claimed_until=None
        )
    delivery_mark_sent(Q(claim_token=token), provider_message_id=None, response={"batch": len(batch)})
    if refused:
        logger.warning("analytics: Mixpanel refused %d of %d events: %s", len(refused), len(batch),
                       next(iter(refused.values())))
    logger.info("analytics: %d deliveries sent in one request", len(batch) - len(refused))
    return len(batch)
