"""One SMS delivery through Twilio's Messages API (the sandbox locally), asking for signed
status callbacks (`views`)."""

import logging
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta

from django.conf import settings
from django.urls import reverse
from twilio.base.exceptions import TwilioException, TwilioRestException
from twilio.rest import Client

from core.errors import ProviderError, ProviderPermanentError, ProviderTransientError
from notifications.models import Delivery, Recipient
from notifications.providers.base import SendItem, SendResult, renders_each
from notifications.providers.twilio.client import twilio_client

logger = logging.getLogger(__name__)

# Clocks of Twilio and ours differ a little; look a bit before the earlier attempt began.
IN_DOUBT_CLOCK_SKEW = timedelta(seconds=30)
RATE_LIMITED_PAUSE_SECONDS = 1.0


def status_callback_url(delivery: Delivery) -> str:
    """The public URL Twilio reports to; it names the delivery, so a callback that
    arrives before the worker recorded the send still finds its delivery."""
    path = reverse("twilio-status-callback", kwargs={"delivery_id": delivery.pk})
    return settings.CARILLON_PUBLIC_URL.rstrip("/") + path


def _already_sent(client: Client, to: str, body: str, since: datetime) -> str | None:
    """The sid of a message an earlier, interrupted attempt handed to Twilio, if any."""
    for message in client.messages.list(to=to, limit=50):
        if message.body == body and message.date_created and message.date_created >= since - IN_DOUBT_CLOCK_SKEW:
            return str(message.sid)
    return None


def sms_send(*, items: list[SendItem]) -> list[SendResult | ProviderError]:
    """Send each delivery's SMS. Twilio has no batch endpoint: a few requests go at once
    (CARILLON_SMS_CONCURRENCY), each on its own; what the database knows is read first,
    in bulk, so the threads only talk to Twilio."""
    numbers = dict(
        Recipient.objects.filter(user_id__in=[item.user.pk for item in items]).values_list("user_id", "phone_number")
    )
    bodies = renders_each("sms", "txt", items)
    requests = [
        (item, numbers.get(item.user.pk, ""), body, status_callback_url(item.delivery))
        for item, body in zip(items, bodies, strict=True)
    ]
    if len(requests) == 1:  # the transactional case: no thread to start
        return [_sms_one(*requests[0])]
    with ThreadPoolExecutor(max_workers=settings.CARILLON_SMS_CONCURRENCY) as pool:
        return list(pool.map(lambda request: _sms_one(*request), requests))


def _sms_one(item: SendItem, to: str, body: str, callback_url: str) -> SendResult | ProviderError:
    if not to:
        return ProviderPermanentError(f"user {item.user.pk} has no phone number (notifications.Recipient)")
    client = twilio_client()
    try:
        # Twilio takes no idempotency key on Messages: after an interrupted attempt, ask
        # Twilio whether the message went out before sending it again.
        if item.in_doubt_since is not None:
            sid = _already_sent(client, to, body, item.in_doubt_since)
            if sid:
                logger.info("delivery %s: sms %s was sent by an interrupted attempt", item.delivery.pk, sid)
                return SendResult(provider_message_id=sid, response={"recovered": True})
        message = client.messages.create(
            to=to, from_=settings.TWILIO_FROM_NUMBER, body=body, status_callback=callback_url
        )
    except TwilioRestException as exc:
        reply = {"status": exc.status, "code": exc.code, "message": exc.msg}
        if exc.status == 429:
            # Every sender pauses as long as Twilio asks (a second if it does not say).
            asked = client.http_client.retry_after
            return ProviderTransientError(
                f"Twilio 429: {exc.msg}", response=reply, retry_after=asked or RATE_LIMITED_PAUSE_SECONDS
            )
        if exc.status >= 500:
            return ProviderTransientError(f"Twilio {exc.status}: {exc.msg}", response=reply)
        return ProviderPermanentError(f"Twilio {exc.status} ({exc.code}): {exc.msg}", response=reply)
    except (TwilioException, OSError) as exc:
        # requests' errors are OSErrors; a timeout may hide an accepted message.
        return ProviderTransientError(f"Twilio unreachable: {exc}", in_doubt=True)
    return SendResult(provider_message_id=str(message.sid), response={"status": message.status, "to": to})
