"""A small client for the sandbox's own API, for tests and benchmarks."""

import time
from typing import Any

import requests


class SandboxClient:
    """Read what the sandbox received and turn its knobs."""

    def __init__(self, url: str, *, smtp_port: int) -> None:
        self.url = url.rstrip("/")
        self.smtp_port = smtp_port
        self.http = requests.Session()

    def reset(self) -> None:
        self.http.post(f"{self.url}/api/reset", timeout=10).raise_for_status()

    def inbox(self, provider: str) -> dict[str, Any]:
        """Counters, knobs and received items of one provider (email, sms, mixpanel)."""
        response = self.http.get(f"{self.url}/api/received/{provider}", timeout=10)
        response.raise_for_status()
        return dict(response.json()[provider])

    def received(self, provider: str) -> list[dict[str, Any]]:
        return list(self.inbox(provider)["received"])

    def set_knobs(self, provider: str, **knobs: Any) -> dict[str, Any]:
        response = self.http.put(f"{self.url}/api/knobs/{provider}", json=knobs, timeout=10)
        response.raise_for_status()
        return dict(response.json())

    def wait_for(self, provider: str, count: int, *, timeout: float = 30.0) -> list[dict[str, Any]]:
        """Wait until at least `count` items arrived; return them. Raise on timeout."""
        deadline = time.monotonic() + timeout
        while True:
            items = self.received(provider)
            if len(items) >= count or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        if len(items) < count:
            raise TimeoutError(f"sandbox {provider}: {len(items)} of {count} items after {timeout}s")
        return items

    def chat_rooms(self, *, summary: bool = False) -> dict[str, Any]:
        """The chat platform's per-room arrival order, order violations and duplicates
        (only the totals when `summary`)."""
        response = self.http.get(f"{self.url}/api/chat/rooms", params={"summary": 1} if summary else {}, timeout=30)
        response.raise_for_status()
        return dict(response.json())

    def set_chat_room(self, room: str, **knobs: Any) -> dict[str, Any]:
        """Per-room knobs of the chat platform, e.g. callback_delay_ms=5000 for one slow room."""
        response = self.http.put(f"{self.url}/api/chat/rooms/{room}", json=knobs, timeout=10)
        response.raise_for_status()
        return dict(response.json())
