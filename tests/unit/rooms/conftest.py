"""Rooms tests: real database, the inputs for the shard owners captured instead of sent."""

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest

from rooms.models import ChatProvider, Room, RoomMessage
from rooms.services.enqueue import room_create


@dataclass
class Inputs:
    """What the services handed to the rooms' shard owners: (shard, input) pairs."""

    calls: list[tuple[int, dict[str, Any]]] = field(default_factory=list)

    publishes: int = 0  # calls of shard_publish (each one wait for RabbitMQ's confirms)

    def publish(self, inputs: Sequence[tuple[int, dict[str, Any]]]) -> None:
        self.publishes += 1
        self.calls.extend(inputs)

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        return [payload for _, payload in self.calls if payload["kind"] == kind]


@pytest.fixture
def sent(monkeypatch: pytest.MonkeyPatch) -> Inputs:
    """Publishing crosses a process boundary (RabbitMQ, then an owner): record the inputs."""
    from rooms.services import acks, enqueue, operator

    recorder = Inputs()
    for module in (acks, enqueue, operator):
        monkeypatch.setattr(module, "shard_publish", recorder.publish)
    return recorder


def owner_puts_in_flight(message: RoomMessage, attempt: int = 1) -> None:
    """Write what a room's owner records when it hands a message to the platform."""
    RoomMessage.objects.filter(pk=message.pk).update(status=RoomMessage.Status.IN_FLIGHT, attempts=attempt)
    Room.objects.filter(pk=message.room_id).update(in_flight=message, attempt=attempt)


@pytest.fixture
def provider(db: None) -> ChatProvider:
    return ChatProvider.objects.create(name="chat", ack_timeout_ms=500, timeout_policy="proceed")


@pytest.fixture
def resend_provider(db: None) -> ChatProvider:
    return ChatProvider.objects.create(name="chat-resend", ack_timeout_ms=500, timeout_policy="resend", max_resends=2)


@pytest.fixture
def room(provider: ChatProvider) -> Room:
    return room_create(provider_name=provider.name, recipient="+15550001")
