"""Email: through Postmark's batch API when POSTMARK_SERVER_TOKEN is set, otherwise through
Django's email framework (SMTP locally, another ESP via django-anymail). Deliveries and
digests both send through here, so a failure is classified the same way wherever it
happens."""

import logging
import os
import smtplib
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

from django.conf import settings
from django.core.mail import EmailMultiAlternatives, get_connection
from django.core.mail.backends.base import BaseEmailBackend

from core.errors import ProviderError, ProviderPermanentError, ProviderTransientError
from notifications.events import Lane, event_type_get
from notifications.models import Delivery
from notifications.providers.base import SendItem, SendResult, renders_each
from notifications.providers.postmark.client import (
    MAX_BATCH_MESSAGES,
    postmark_configured,
    postmark_send_batch,
)

logger = logging.getLogger(__name__)

# A process keeps its SMTP session between sends: a new one for every batch cost a TCP
# connection, the greeting, EHLO (with a real server STARTTLS and AUTH too) and QUIT. A
# session idle this long is closed rather than reused (servers close idle ones after
# minutes; RFC 5321 asks at least five), and one that sent this many is replaced (some
# ESPs cap the messages of a connection).
SESSION_IDLE_SECONDS = 30.0
SESSION_MESSAGES_MAX = 100


def message_id(delivery: Delivery) -> str:
    """A Message-ID fixed per delivery: a resend after a crash is the same message, which
    mailboxes and ESPs collapse instead of showing twice."""
    return f"<delivery-{delivery.pk}.{delivery.event_id}@carillon>"


def email_message_send(*, to: str, subject: str, text: str, html: str, message_id: str) -> str:
    """Send one email (text with an HTML alternative) that is not a delivery's (a digest),
    to Postmark or over this thread's kept SMTP session, as deliveries' emails go; return
    the provider's id for it.

    Raises ProviderTransientError for an SMTP 4xx (a 421 with the pause email takes) or a
    connection lost (in doubt: the server may have taken the message),
    ProviderPermanentError for an SMTP 5xx. Give a
    Message-ID fixed per message, so that a resend is the same message to the mailbox.
    """
    if postmark_configured():
        message = _postmark_message(to=to, subject=subject, text=text, html=html, message_id=message_id,
                                    stream=settings.POSTMARK_TRANSACTIONAL_STREAM)
        [result] = _postmark_send([message])
    else:
        email = {"subject": subject, "text": text, "html": html, "message_id": message_id}
        [result] = _over_kept_session([lambda connection: SendResult(
            provider_message_id=_smtp_send(to=to, **email, connection=connection), response={"to": to})])
    if isinstance(result, ProviderError):
        raise result
    return result.provider_message_id


def _smtp_send(*, to: str, subject: str, text: str, html: str, message_id: str, connection: BaseEmailBackend) -> str:
    """One email over an open session (email_message_send's errors); the provider's id."""
    email = EmailMultiAlternatives(
        subject=subject,
        body=text,
        from_email=settings.DEFAULT_FROM_EMAIL,
        to=[to],
        headers={"Message-ID": message_id},
        connection=connection,
    )
    email.attach_alternative(html, "text/html")
    try:
        email.send(fail_silently=False)
    except smtplib.SMTPResponseException as exc:
        reply = {"smtp_code": exc.smtp_code, "smtp_error": str(exc.smtp_error)}
        if 400 <= exc.smtp_code < 500:
            # 421: busy or over its rate, the server closes the connection (smtplib has
            # closed it already): email is paused, as for a provider's 429.
            paused = settings.CARILLON_SMTP_BUSY_PAUSE_SECONDS if exc.smtp_code == 421 else None
            raise ProviderTransientError(
                f"SMTP {exc.smtp_code}: {exc.smtp_error!r}", response=reply, retry_after=paused
            ) from exc
        raise ProviderPermanentError(f"SMTP {exc.smtp_code}: {exc.smtp_error!r}", response=reply) from exc
    except (TimeoutError, smtplib.SMTPServerDisconnected, smtplib.SMTPConnectError, OSError) as exc:
        # Cut off mid-conversation the server may have taken the message: the same
        # Message-ID on the retry keeps it one message for the recipient.
        raise ProviderTransientError(f"SMTP connection: {exc}", in_doubt=True) from exc
    # anymail fills anymail_status with the ESP's id; plain SMTP has the Message-ID.
    status = getattr(email, "anymail_status", None)
    return str(getattr(status, "message_id", None) or message_id)


def email_send(*, items: list[SendItem]) -> list[SendResult | ProviderError]:
    """Send each delivery's email, whichever event it is of: to Postmark in a request per
    500, or over one SMTP (or ESP) session, kept for this thread's next call.

    A connection lost midway leaves the rest unsent, each answered as a transient error:
    the retry sends only those. A resend of one in doubt is the same message (its
    Message-ID), which the mailbox shows once.
    """
    if postmark_configured():
        return _email_send_postmark(items)
    return _over_kept_session([partial(_email_one, item, email) for item, email in zip(items, _rendered(items), strict=True)])


def _over_kept_session(sends: list[Callable[[BaseEmailBackend], SendResult]]) -> list[SendResult | ProviderError]:
    """Each send's result, all over this thread's kept session (or a new one), which is
    kept again if it ended well. A kept session found dead on its first send is replaced
    and that send tried once more; past that, a connection lost or email paused leaves the
    rest unsent, each a transient error."""
    results: list[SendResult | ProviderError] = []
    try:
        session = _sessions.take()
    except OSError as exc:
        return [ProviderTransientError(f"SMTP connection: {exc}") for _ in sends]
    keep = False
    try:
        for send in sends:
            try:
                try:
                    results.append(send(session.connection))
                except ProviderTransientError as exc:
                    if not (exc.in_doubt and session.untried):
                        raise
                    # The kept session died while idle (the server closed it, or restarted):
                    # the message went no further than its first command. Once more on a
                    # new session; the same Message-ID keeps it one message in any case.
                    _sessions.drop(session)
                    session = _sessions.take()
                    results.append(send(session.connection))
            except ProviderError as exc:
                results.append(exc)
                if isinstance(exc, ProviderTransientError) and (exc.in_doubt or exc.retry_after):
                    break  # the connection is gone, or email paused: the rest wait for the retry
            finally:
                session.untried = False
        else:
            keep = True
    except OSError as exc:  # no new session in place of a dead one
        results.append(ProviderTransientError(f"SMTP connection: {exc}"))
    finally:
        if keep:
            _sessions.give_back(session, sent=len(sends))
        else:
            _sessions.drop(session)
    unsent = ProviderTransientError("SMTP connection lost before this message was sent")
    return results + [unsent] * (len(sends) - len(results))


@dataclass(eq=False)
class _Session:
    connection: BaseEmailBackend
    settings: tuple[object, ...]
    untried: bool = False  # kept from an earlier send, and nothing sent on it since
    sent: int = 0  # messages handed to this session
    idle_since: float = 0.0


class _Sessions:
    """This process's SMTP session, kept open between batches (see SESSION_IDLE_SECONDS).
    One per thread: smtplib's connection is not safe to share."""

    def __init__(self) -> None:
        self._start()
        # A forked child (a Celery pool process) must not write on its parent's socket.
        os.register_at_fork(after_in_child=self._start)

    def _start(self) -> None:
        self._local = threading.local()

    def take(self) -> _Session:
        """The kept session if it is fit to reuse, else a new one, open (OSError if the
        server cannot be reached)."""
        kept: _Session | None = getattr(self._local, "session", None)
        self._local.session = None
        current = _email_settings()
        if kept is not None:
            fresh = time.monotonic() - kept.idle_since < SESSION_IDLE_SECONDS
            if fresh and kept.settings == current and kept.sent < SESSION_MESSAGES_MAX:
                kept.untried = True
                return kept
            self.drop(kept)
        connection = get_connection()
        connection.open()
        return _Session(connection, current)

    def give_back(self, session: _Session, *, sent: int) -> None:
        """Keep a session that ended well for the next send."""
        session.sent += sent
        session.idle_since = time.monotonic()
        self._local.session = session

    def drop(self, session: _Session) -> None:
        try:
            session.connection.close()
        except Exception:  # noqa: BLE001 - a dead session's QUIT fails; it is gone either way
            logger.debug("closing an SMTP session failed", exc_info=True)


_sessions = _Sessions()


def _email_settings() -> tuple[object, ...]:
    """What a session was opened with: one opened before the settings changed is not
    reused."""
    return tuple(getattr(settings, name, None) for name in (
        "EMAIL_BACKEND", "EMAIL_HOST", "EMAIL_PORT", "EMAIL_HOST_USER", "EMAIL_HOST_PASSWORD", "EMAIL_USE_TLS",
        "EMAIL_USE_SSL", "EMAIL_TIMEOUT"))


def _email_send_postmark(items: list[SendItem]) -> list[SendResult | ProviderError]:
    """Each delivery's email rendered for its user; those with an address sent in batches,
    a broadcast's in the broadcast stream."""
    results: list[SendResult | ProviderError | None] = [None] * len(items)
    messages: list[tuple[int, dict[str, object]]] = []
    for index, (item, email) in enumerate(zip(items, _rendered(items), strict=True)):
        try:
            address = _address(item)
        except ProviderPermanentError as exc:
            results[index] = exc
            continue
        bulk = event_type_get(name=item.event.type, version=item.event.version).lane == Lane.BULK
        stream = settings.POSTMARK_BROADCAST_STREAM if bulk else settings.POSTMARK_TRANSACTIONAL_STREAM
        metadata = {"delivery": str(item.delivery.pk), "event": str(item.event.pk)}
        messages.append((index, _postmark_message(to=address, **email, stream=stream, metadata=metadata)))
    sent = _postmark_send([message for _, message in messages])
    for (index, _), result in zip(messages, sent, strict=True):
        results[index] = result
    return [result for result in results if result is not None]


def _postmark_message(
    *, to: str, subject: str, text: str, html: str, message_id: str, stream: str, metadata: dict[str, str] | None = None,
) -> dict[str, object]:
    return {
        "From": settings.DEFAULT_FROM_EMAIL, "To": to, "Subject": subject, "TextBody": text, "HtmlBody": html,
        "Headers": [{"Name": "Message-ID", "Value": message_id}], "MessageStream": stream,
        "Metadata": metadata or {},
    }


def _postmark_send(messages: list[dict[str, object]]) -> list[SendResult | ProviderError]:
    """Each message's result, a request per MAX_BATCH_MESSAGES. A request that failed whole
    answers its error for each of its messages; the requests after one Postmark refused
    for its rate, or left in doubt, are not made (the retry sends them)."""
    results: list[SendResult | ProviderError] = []
    for start in range(0, len(messages), MAX_BATCH_MESSAGES):
        batch = messages[start : start + MAX_BATCH_MESSAGES]
        try:
            answers = postmark_send_batch(batch)
        except ProviderError as exc:
            results += [exc] * len(batch)
            if isinstance(exc, ProviderTransientError):
                unsent = ProviderTransientError(f"not sent: an earlier request met {exc}", retry_after=exc.retry_after)
                return results + [unsent] * (len(messages) - len(results))
            continue
        results += [
            answer if isinstance(answer, ProviderError)
            else SendResult(provider_message_id=answer, response={"to": message["To"]})
            for message, answer in zip(batch, answers, strict=True)
        ]
    return results


def _email_one(item: SendItem, email: dict[str, str], connection: BaseEmailBackend) -> SendResult:
    address = _address(item)
    provider_id = _smtp_send(to=address, **email, connection=connection)
    return SendResult(provider_message_id=provider_id, response={"to": address})


def _address(item: SendItem) -> str:
    address = str(getattr(item.user, "email", ""))
    if not address:
        raise ProviderPermanentError(f"user {item.user.pk} has no email address")
    return address


def _rendered(items: list[SendItem]) -> list[dict[str, str]]:
    """Each delivery's email for its user: subject, text and HTML, and its Message-ID."""
    parts = {name: renders_each("email", part, items)
             for name, part in (("subject", "subject.txt"), ("text", "txt"), ("html", "html"))}
    return [
        {"subject": subject, "text": text, "html": html, "message_id": message_id(item.delivery)}
        for item, subject, text, html in zip(items, parts["subject"], parts["text"], parts["html"], strict=True)
    ]
