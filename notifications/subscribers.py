"""Subscribers: who takes which events, on which channel. Declared, never coded into the
publisher: adding one here (or in any app's `subscribers` module) changes no publishing code."""

import fnmatch
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from django.contrib.auth import get_user_model
from django.contrib.auth.models import AbstractBaseUser

from core.registry import Registry
from notifications.channels import Channel
from notifications.exceptions import InvalidEvent
from notifications.models import Event


def event_user(event: Event) -> list[AbstractBaseUser]:
    """The user named by the event's `user_id` (the demo events' recipient)."""
    user = get_user_model().objects.filter(pk=event.data.get("user_id")).first()
    if user is None:
        raise InvalidEvent(f"event {event.id}: no user with id {event.data.get('user_id')!r}")
    return [user]


@dataclass(frozen=True)
class Subscriber:
    name: str
    channel: Channel
    event_types: tuple[str, ...]  # exact names or shell patterns: "account.*"
    # Whom it tells of an event addressed to no audience (an audience, when the event has
    # one, decides instead: notifications/audiences.py).
    recipients: Callable[[Event], Sequence[AbstractBaseUser]] = event_user

    def takes(self, event_type: str) -> bool:
        return any(fnmatch.fnmatchcase(event_type, pattern) for pattern in self.event_types)


_SUBSCRIBERS: Registry[Subscriber] = Registry("subscriber")


def subscriber_register(subscriber: Subscriber) -> Subscriber:
    return _SUBSCRIBERS.register(subscriber.name, subscriber)


def subscriber_get(name: str) -> Subscriber:
    subscriber = _SUBSCRIBERS.get(name)
    if subscriber is None:
        raise InvalidEvent(f"no subscriber named {name!r}; declared: {', '.join(_SUBSCRIBERS.names())}")
    return subscriber


def subscribers_for(event_type: str) -> list[Subscriber]:
    return [subscriber for subscriber in _SUBSCRIBERS.values() if subscriber.takes(event_type)]


def subscribers() -> list[Subscriber]:
    return _SUBSCRIBERS.values()


# --- Carillon's demo wiring ---------------------------------------------------------------
# account.created          → welcome email + analytics + in-app
# password.reset_requested → email + SMS
# video.liked              → in-app + analytics
# product.announcement     → email + in-app, to the event's audience

subscriber_register(
    Subscriber("transactional_email", Channel.EMAIL, ("account.created", "password.reset_requested"))
)
subscriber_register(Subscriber("security_sms", Channel.SMS, ("password.reset_requested",)))
subscriber_register(Subscriber("product_analytics", Channel.ANALYTICS, ("account.created", "video.liked")))
subscriber_register(Subscriber("activity_feed", Channel.INAPP, ("account.created", "video.liked")))
subscriber_register(Subscriber("announcement_email", Channel.EMAIL, ("product.announcement",)))
subscriber_register(Subscriber("announcement_feed", Channel.INAPP, ("product.announcement",)))
