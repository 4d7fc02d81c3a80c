"""What the sandbox received, per provider, and the knobs that shape its answers."""

import asyncio
import itertools
import math
import random
import time
from collections import deque
from dataclasses import asdict, dataclass, fields
from typing import Any

from aiohttp import ClientSession, web

PROVIDERS = ("email", "sms", "mixpanel", "chat")

# Enough for any test and a benchmark's sample; counters keep the true totals.
KEEP_RECEIVED = 100_000


class KnobError(ValueError):
    """A knob was set to a name or value the sandbox does not understand."""


CALLBACK_DISTRIBUTIONS = ("uniform", "normal", "exponential")


@dataclass
class Knobs:
    """How a provider misbehaves. All zero means a fast, healthy provider."""

    latency_ms: float = 0.0  # added before every answer
    error_rate: float = 0.0  # share of requests answered with error_status (0..1)
    error_status: int = 503  # HTTP status, or SMTP reply code for email (451, 550, ...)
    fail_next: int = 0  # the next N requests fail with error_status, whatever error_rate says
    callback_delay_ms: float = 50.0  # between status changes (SMS); before the ack (chat)
    callback_jitter_ms: float = 0.0  # chat: spread of the ack delay (see callback_distribution)
    # chat: how the ack delay is drawn: uniform (delay ± jitter), normal (mean delay,
    # standard deviation jitter), exponential (mean delay; a long tail, jitter unused)
    callback_distribution: str = "uniform"
    callback_loss_rate: float = 0.0  # share of messages whose callbacks never come (0..1)
    final_status: str = "delivered"  # SMS: delivered, undelivered or failed
    # Requests taken per second, as a provider's rate limit (0: no limit). Past it the
    # provider answers 429 with Retry-After (SMTP: 421), as Twilio and Mixpanel do.
    rate_limit_per_second: float = 0.0

    def update(self, changes: dict[str, Any]) -> None:
        known = [field.name for field in fields(self)]
        for name, value in changes.items():
            if name not in known:
                raise KnobError(f"unknown knob {name!r}; known knobs: {', '.join(known)}")
            kind = type(getattr(self, name))  # float, int or str, as the default is
            try:
                converted = kind(value)
            except (TypeError, ValueError) as exc:
                raise KnobError(f"knob {name!r} takes a {kind.__name__}, not {value!r}") from exc
            if name.endswith("_rate") and not 0.0 <= converted <= 1.0:
                raise KnobError(f"knob {name!r} is a share between 0 and 1, not {value!r}")
            if name == "rate_limit_per_second" and converted < 0:
                raise KnobError("rate_limit_per_second is 0 (no limit) or more")
            if name == "final_status" and converted not in ("delivered", "undelivered", "failed"):
                raise KnobError("final_status is one of delivered, undelivered, failed")
            if name == "callback_distribution" and converted not in CALLBACK_DISTRIBUTIONS:
                raise KnobError(f"callback_distribution is one of {', '.join(CALLBACK_DISTRIBUTIONS)}")
            setattr(self, name, converted)

    def should_fail(self) -> bool:
        """Decide, once per request, whether this one fails."""
        if self.fail_next > 0:
            self.fail_next -= 1
            return True
        return self.error_rate > 0 and random.random() < self.error_rate  # noqa: S311

    def callback_delay(self, mean_ms: float | None = None) -> float:
        """Draw one callback delay in ms from the distribution the knobs describe."""
        mean = self.callback_delay_ms if mean_ms is None else mean_ms
        jitter = self.callback_jitter_ms
        if self.callback_distribution == "normal":
            drawn = random.gauss(mean, jitter)  # noqa: S311
        elif self.callback_distribution == "exponential":
            drawn = random.expovariate(1 / mean) if mean > 0 else 0.0  # noqa: S311
        else:
            drawn = mean + random.uniform(-jitter, jitter)  # noqa: S311
        return max(0.0, drawn)

    async def delay(self) -> None:
        if self.latency_ms > 0:
            await asyncio.sleep(self.latency_ms / 1000)


@dataclass
class Inbox:
    """One provider's received items and counters."""

    received: deque[dict[str, Any]]
    knobs: Knobs
    accepted: int = 0
    rejected: int = 0
    duplicates: int = 0
    in_flight: int = 0  # requests received and not yet answered (tests time a crash by it)
    requests: int = 0  # requests that were accepted (several items may come in one)
    rate_limited: int = 0  # requests refused for going over rate_limit_per_second
    # The rate limit's token bucket: a second's worth of requests may come at once.
    _tokens: float = 0.0
    _refilled_at: float = 0.0

    def admit(self) -> int | None:
        """Take one request under the rate limit; answer the seconds to wait (Retry-After)
        when it is over, else None."""
        rate = self.knobs.rate_limit_per_second
        if rate <= 0:
            return None
        now = time.monotonic()
        if self._refilled_at == 0.0:
            self._tokens = rate
        else:
            self._tokens = min(rate, self._tokens + (now - self._refilled_at) * rate)
        self._refilled_at = now
        if self._tokens >= 1:
            self._tokens -= 1
            return None
        self.rate_limited += 1
        return max(1, math.ceil((1 - self._tokens) / rate))

    def summary(self) -> dict[str, Any]:
        return {
            "in_flight": self.in_flight,
            "requests": self.requests,
            "accepted": self.accepted,
            "rejected": self.rejected,
            "duplicates": self.duplicates,
            "rate_limited": self.rate_limited,
            "knobs": asdict(self.knobs),
        }


class Store:
    """Everything the sandbox holds, in memory: a restart starts empty, like a fresh test."""

    def __init__(self) -> None:
        self._sequence = itertools.count(1)
        self.inboxes: dict[str, Inbox] = {}
        # Provider-side deduplication keys: email Message-IDs, Mixpanel insert keys.
        self.seen_message_ids: set[str] = set()
        self.seen_insert_ids: set[tuple[object, ...]] = set()
        self.reset()

    def reset(self) -> None:
        self.seen_message_ids.clear()
        self.seen_insert_ids.clear()
        self.inboxes = {
            name: Inbox(received=deque(maxlen=KEEP_RECEIVED), knobs=Knobs()) for name in PROVIDERS
        }

    def inbox(self, provider: str) -> Inbox:
        return self.inboxes[provider]

    def mailbox_shows(self, message_id: str | None) -> bool:
        """Whether the mailbox shows this email, the first with its Message-ID: a mailbox
        (Gmail, for one) collapses repeats, so a resend counts as a duplicate instead."""
        if message_id and message_id in self.seen_message_ids:
            self.inboxes["email"].duplicates += 1
            return False
        if message_id:
            self.seen_message_ids.add(message_id)
        return True

    def record(self, provider: str, item: dict[str, Any]) -> dict[str, Any]:
        item = {"seq": next(self._sequence), "received_at": time.time(), **item}
        inbox = self.inboxes[provider]
        inbox.received.append(item)
        inbox.accepted += 1
        return item


# Application state shared by the provider modules of the sandbox's aiohttp app.
STORE_KEY = web.AppKey("store", Store)
HTTP_KEY = web.AppKey("http", ClientSession)  # for callbacks the sandbox sends
AUTH_TOKEN_KEY = web.AppKey("twilio_auth_token", str)
