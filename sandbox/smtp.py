"""SMTP: accept mail as a mail server would, and record each message."""

import email
import logging
import re
from email.header import decode_header, make_header
from email.message import Message

from aiosmtpd.smtp import SMTP, Envelope, Session

from sandbox.store import Store

logger = logging.getLogger(__name__)


# Messages are parsed with the email package's legacy policy (compat32): its modern one
# builds a parsed object for every header read, which was nine tenths of the sandbox's
# CPU under a few hundred emails a second, on the machine the benchmarks share. The
# headers a reader sees are unfolded and their encoded words decoded here instead.
_FOLDED = re.compile(r"\r?\n[ \t]")


def _header(value: object) -> str | None:
    if value is None:
        return None
    text = _FOLDED.sub(" ", str(value))
    return str(make_header(decode_header(text))) if "=?" in text else text


def _body(message: Message, subtype: str) -> str | None:
    """The message's text/<subtype> body (the part of that type, not an attachment)."""
    for part in message.walk():
        if part.get_content_type() == f"text/{subtype}" and part.get_content_disposition() != "attachment":
            payload = part.get_payload(decode=True)
            if isinstance(payload, bytes):
                return payload.decode(part.get_content_charset() or "utf-8", errors="replace")
    return None


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
        message = email.message_from_bytes(raw)
        message_id = _header(message["Message-ID"])
        if not self.store.mailbox_shows(message_id):
            return "250 Message accepted for delivery"
        item = self.store.record(
            "email",
            {
                "message_id": message_id,
                "mail_from": envelope.mail_from,
                "rcpt_to": list(envelope.rcpt_tos),
                "from": _header(message["From"]),
                "to": _header(message["To"]),
                "subject": _header(message["Subject"]),
                "text": _body(message, "plain"),
                "html": _body(message, "html"),
                "headers": {key: _header(value) for key, value in message.items()},
            },
        )
        logger.info("email %s accepted for %s", item["message_id"], item["rcpt_to"])
        return "250 Message accepted for delivery"


def smtp_protocol_factory(store: Store) -> SMTP:
    """Build one SMTP session protocol for `loop.create_server`."""
    return SMTP(RecordingHandler(store), hostname="sandbox.carillon.local", enable_SMTPUTF8=True)
