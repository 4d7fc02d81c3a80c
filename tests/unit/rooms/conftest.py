"""State-machine tests: real database, the send task's publish captured instead of sent."""

from dataclasses import dataclass, field

import pytest

from rooms.models import ChatProvider, Room
from rooms.services.enqueue import room_create


@dataclass
class SentTasks:
    calls: list[tuple[int, int]] = field(default_factory=list)

    def publish(self, message_id: int, attempt: int) -> None:
        self.calls.append((message_id, attempt))


@pytest.fixture
def sent(monkeypatch: pytest.MonkeyPatch) -> SentTasks:
    """Publishing crosses a process boundary (RabbitMQ): record (message_id, attempt)."""
    from rooms import queues

    recorder = SentTasks()
    monkeypatch.setattr(queues, "room_send_publish", recorder.publish)
    return recorder


@pytest.fixture
def provider(db: None) -> ChatProvider:
    return ChatProvider.objects.create(name="chat", ack_timeout_ms=500, timeout_policy="proceed")


@pytest.fixture
def resend_provider(db: None) -> ChatProvider:
    return ChatProvider.objects.create(name="chat-resend", ack_timeout_ms=500, timeout_policy="resend", max_resends=2)


@pytest.fixture
def room(provider: ChatProvider) -> Room:
    return room_create(provider_name=provider.name, recipient="+15550001")
