"""Email through Django's email framework: SMTP locally, an ESP via django-anymail in production."""

import logging
import smtplib
from datetime import datetime

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.core.mail import EmailMultiAlternatives

from core.errors import ProviderPermanentError, ProviderTransientError
from notifications.models import Delivery, Event
from notifications.providers.base import SendResult, render

logger = logging.getLogger(__name__)


def message_id(delivery: Delivery) -> str:
    """A Message-ID fixed per delivery: a resend after a crash is the same message, which
    mailboxes and ESPs collapse instead of showing twice."""
    return f"<delivery-{delivery.pk}.{delivery.event_id}@carillon>"


def email_send(
    *, delivery: Delivery, event: Event, user: AbstractBaseUser, in_doubt_since: datetime | None
) -> SendResult:
    address = getattr(user, "email", "")
    if not address:
        raise ProviderPermanentError(f"user {user.pk} has no email address")
    email = EmailMultiAlternatives(
        subject=render("email", event, "subject.txt", user),
        body=render("email", event, "txt", user),
        from_email=settings.DEFAULT_FROM_EMAIL,
        to=[address],
        headers={"Message-ID": message_id(delivery)},
    )
    email.attach_alternative(render("email", event, "html", user), "text/html")
    try:
        email.send(fail_silently=False)
    except smtplib.SMTPResponseException as exc:
        reply = {"smtp_code": exc.smtp_code, "smtp_error": str(exc.smtp_error)}
        if 400 <= exc.smtp_code < 500:
            raise ProviderTransientError(f"SMTP {exc.smtp_code}: {exc.smtp_error!r}", response=reply) from exc
        raise ProviderPermanentError(f"SMTP {exc.smtp_code}: {exc.smtp_error!r}", response=reply) from exc
    except (TimeoutError, smtplib.SMTPServerDisconnected, smtplib.SMTPConnectError, OSError) as exc:
        # Cut off mid-conversation the server may have taken the message: the same
        # Message-ID on the retry keeps it one message for the recipient.
        raise ProviderTransientError(f"SMTP connection: {exc}", in_doubt=True) from exc
    # anymail fills anymail_status with the ESP's id; plain SMTP has the Message-ID.
    status = getattr(email, "anymail_status", None)
    provider_id = getattr(status, "message_id", None) or message_id(delivery)
    return SendResult(provider_message_id=str(provider_id), response={"to": address})
