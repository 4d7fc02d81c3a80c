"""What every channel's sender takes and returns, and how a provider's refusal and its
Retry-After are read."""

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any, Protocol

from django.contrib.auth.models import AbstractBaseUser
from django.template.loader import get_template

from core.errors import ProviderError, ProviderPermanentError, ProviderTransientError
from notifications.models import Delivery, Event


@dataclass
class SendResult:
    provider_message_id: str = ""
    response: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class SendItem:
    """One delivery of an event to hand to the provider. `in_doubt_since` is set when an
    earlier attempt started at that time and may have reached the provider before dying:
    check before sending again, or send with the same idempotency key."""

    event: Event
    delivery: Delivery
    user: AbstractBaseUser
    in_doubt_since: datetime | None


class Sender(Protocol):
    def __call__(self, *, items: list[SendItem]) -> list[SendResult | ProviderError]:
        """Hand deliveries (of one event, or of several sent together) to the provider,
        together where the provider allows (one SMTP connection, one bulk insert, a few
        requests at once); answer each one's result or the error it met, in order. One
        item is the transactional case and must cost no more than a single send."""
        ...


class BatchSender(Protocol):
    def __call__(self, own: list[Delivery], *, waited: bool) -> list[tuple[int, str]]:
        """Hand one run's deliveries (`own`) to the provider together with others; answer
        those it refused for good (pk, reason; now failed). Raise BatchPending to run again
        later (`waited`: this run was put off once already)."""
        ...


# What lets a template's output depend on its user: naming it, or a tag that could reach
# it without naming it (a custom tag library, another template, the whole context). Whole
# words, not "{% include": Django also reads "{%include". A word in the text ("download")
# only costs a render per user.
_MAY_READ_USER = ("user", "load", "include", "extends", "debug")


def template_reads_no_user(source: str) -> bool:
    """Whether a template's output is the same whatever its user (by its source)."""
    return not any(word in source for word in _MAY_READ_USER)


def renders(channel: str, event: Event, part: str, users: Sequence[AbstractBaseUser]) -> list[str]:
    """notifications/<channel>/<event type>.<part> rendered with the event for each user,
    in order; once for them all when the template's text cannot depend on its user (an
    announcement's title: the same for 500 recipients)."""
    template = get_template(f"notifications/{channel}/{event.type}.{part}")
    source = str(getattr(getattr(template, "template", None), "source", "user"))
    if template_reads_no_user(source):
        return [template.render({"event": event, "data": event.data, "user": None}).strip()] * len(users)
    return [template.render({"event": event, "data": event.data, "user": user}).strip() for user in users]


def renders_each(channel: str, part: str, items: Sequence[SendItem]) -> list[str]:
    """`renders` for items of one or several events: each event's template rendered for
    its own items, answered in the items' order."""
    by_event: dict[Any, list[int]] = {}
    for index, item in enumerate(items):
        by_event.setdefault(item.event.pk, []).append(index)
    texts = [""] * len(items)
    for indexes in by_event.values():
        event = items[indexes[0]].event
        for index, text in zip(indexes, renders(channel, event, part, [items[i].user for i in indexes]), strict=True):
            texts[index] = text
    return texts


def retry_after_seconds(value: str | None) -> float | None:
    """A Retry-After header in seconds: delta-seconds or an HTTP date (RFC 9110)."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, (parsedate_to_datetime(value) - datetime.now(UTC)).total_seconds())
    except (TypeError, ValueError):
        return None


def http_refusal(
    status: int, headers: Mapping[str, str], error: str, answer: dict[str, Any], *, pause_seconds: float
) -> ProviderError:
    """The error a provider's refusal of a whole request stands for: over its rate (429:
    every sender pauses for its Retry-After, or `pause_seconds` without one) or down (5xx)
    is worth retrying; anything else would be refused again."""
    if status == 429:
        asked = retry_after_seconds(headers.get("Retry-After"))
        return ProviderTransientError(error, response={"answer": answer}, retry_after=asked or pause_seconds)
    if status >= 500:
        return ProviderTransientError(error, response={"answer": answer})
    return ProviderPermanentError(error, response={"answer": answer})
