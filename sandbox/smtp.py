"""SMTP: accept mail as a mail server would, and record each message."""

import email
import email.policy
import logging
from email.message import EmailMessage
from typing import Any

from aiosmtpd.smtp import SMTP, Envelope, Session

from sandbox.store import Store

logger = logging.getLogger(__name__)


def _body(message: EmailMessage, subtype: str) -> str | None:
    part = message.get_body(preferencelist=(subtype,))
    return part.get_content() if part is not None else None


class RecordingHandler:
    """aiosmtpd handler: answer DATA as the knobs say, record accepted messages."""

    def __init__(self, store: Store) -> None:
        self.store = store

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:  # noqa: N802 - aiosmtpd's hook name
        inbox = self.store.inbox("email")
        await inbox.knobs.delay()
        # SMTP has no Retry-After: a 4xx reply tells the client to come back later.
        if inbox.admit() is not None:
            return "421 4.7.0 Sandbox rate limit: too many messages, slow down"
        if inbox.knobs.should_fail():
            inbox.rejected += 1
            code = inbox.knobs.error_status
            kind = "temporary" if 400 <= code < 500 else "permanent"
            return f"{code} Sandbox {kind} failure (knob error_status={code})"
        raw = envelope.original_content or b""
        message: Any = email.message_from_bytes(raw, policy=email.policy.default)
        if not self.store.mailbox_shows(message["Message-ID"]):
            return "250 Message accepted for delivery"
        item = self.store.record(
            "email",
            {
                "message_id": message["Message-ID"],
                "mail_from": envelope.mail_from,
                "rcpt_to": list(envelope.rcpt_tos),
                "from": message["From"],
                "to": message["To"],
                "subject": message["Subject"],
                "text": _body(message, "plain"),
                "html": _body(message, "html"),
                "headers": {key: str(value) for key, value in message.items()},
            },
        )
        logger.info("email %s accepted for %s", item["message_id"], item["rcpt_to"])
        return "250 Message accepted for delivery"


def smtp_protocol_factory(store: Store) -> SMTP:
    """Build one SMTP session protocol for `loop.create_server`."""
    return SMTP(RecordingHandler(store), hostname="sandbox.carillon.local", enable_SMTPUTF8=True)
