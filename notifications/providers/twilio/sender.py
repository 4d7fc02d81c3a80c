"""One SMS delivery through Twilio's Messages API (the sandbox locally), asking for signed
status callbacks (`views`)."""

import logging
from datetime import datetime, timedelta

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.urls import reverse
from twilio.base.exceptions import TwilioException, TwilioRestException

from core.errors import ProviderPermanentError, ProviderTransientError
from notifications.models import Delivery, Event, Recipient
from notifications.providers.base import SendResult, render
from notifications.providers.twilio.client import twilio_client

logger = logging.getLogger(__name__)

# Clocks of Twilio and ours differ a little; look a bit before the earlier attempt began.
IN_DOUBT_CLOCK_SKEW = timedelta(seconds=30)


def status_callback_url(delivery: Delivery) -> str:
    """The public URL Twilio reports to; it names the delivery, so a callback that
    arrives before the worker recorded the send still finds its delivery."""
    path = reverse("twilio-status-callback", kwargs={"delivery_id": delivery.pk})
    return settings.CARILLON_PUBLIC_URL.rstrip("/") + path


def _phone_number(user: AbstractBaseUser) -> str:
    number = Recipient.objects.filter(user_id=user.pk).values_list("phone_number", flat=True).first()
    if not number:
        raise ProviderPermanentError(f"user {user.pk} has no phone number (notifications.Recipient)")
    return number


def _already_sent(to: str, body: str, since: datetime) -> str | None:
    """The sid of a message an earlier, interrupted attempt handed to Twilio, if any."""
    for message in twilio_client().messages.list(to=to, limit=50):
        if message.body == body and message.date_created and message.date_created >= since - IN_DOUBT_CLOCK_SKEW:
            return str(message.sid)
    return None


def sms_send(
    *, delivery: Delivery, event: Event, user: AbstractBaseUser, in_doubt_since: datetime | None
) -> SendResult:
    to = _phone_number(user)
    body = render("sms", event, "txt", user)
    try:
        # Twilio takes no idempotency key on Messages: after an interrupted attempt, ask
        # Twilio whether the message went out before sending it again.
        if in_doubt_since is not None:
            sid = _already_sent(to, body, in_doubt_since)
            if sid:
                logger.info("delivery %s: sms %s was sent by an interrupted attempt", delivery.pk, sid)
                return SendResult(provider_message_id=sid, response={"recovered": True})
        message = twilio_client().messages.create(
            to=to,
            from_=settings.TWILIO_FROM_NUMBER,
            body=body,
            status_callback=status_callback_url(delivery),
        )
    except TwilioRestException as exc:
        reply = {"status": exc.status, "code": exc.code, "message": exc.msg}
        if exc.status >= 500 or exc.status == 429:
            raise ProviderTransientError(f"Twilio {exc.status}: {exc.msg}", response=reply) from exc
        raise ProviderPermanentError(f"Twilio {exc.status} ({exc.code}): {exc.msg}", response=reply) from exc
    except (TwilioException, OSError) as exc:
        # requests' errors are OSErrors; a timeout may hide an accepted message.
        raise ProviderTransientError(f"Twilio unreachable: {exc}", in_doubt=True) from exc
    return SendResult(provider_message_id=str(message.sid), response={"status": message.status, "to": to})
