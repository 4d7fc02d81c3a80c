"""factory_boy factories for the rows tests build again and again: users (with the
address Carillon reaches them at), recipients, events."""

from typing import Any

import factory
from django.contrib.auth import get_user_model
from django.utils import timezone
from factory.django import DjangoModelFactory

from notifications.models import Event, Recipient


class UserFactory(DjangoModelFactory):
    """A user with an email address derived from the username; the password is
    `pw-<username>` unless given."""

    class Meta:
        model = get_user_model()

    username = factory.Sequence(lambda n: f"user{n}")
    email = factory.LazyAttribute(lambda user: f"{user.username}@example.com")
    password = factory.LazyAttribute(lambda user: f"pw-{user.username}")

    @classmethod
    def _create(cls, model_class: Any, *args: Any, **kwargs: Any) -> Any:
        return model_class.objects.create_user(*args, **kwargs)  # hashes the password


class RecipientFactory(DjangoModelFactory):
    """How Carillon reaches a user beyond email (phone, digests); makes the user too."""

    class Meta:
        model = Recipient

    user = factory.SubFactory(UserFactory)


def recipient_user(username: str, **recipient: Any) -> Any:
    """A user with a Recipient row (`phone_number`, `digest_frequency`...); the user."""
    return RecipientFactory.create(user=UserFactory.create(username=username), **recipient).user


class EventFactory(DjangoModelFactory):
    """A stored event, as publishing records it (without subscribers' work)."""

    class Meta:
        model = Event

    type = "video.liked"
    version = 1
    occurred_at = factory.LazyFunction(timezone.now)
    data = factory.LazyFunction(dict)
