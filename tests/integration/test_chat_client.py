"""The chat platform's client (rooms.providers) against the sandbox's chat API: what each
answer of the platform becomes for the shard owner, which retries the transient ones and
fails the message on a refusal."""

import json
import socket
import threading
import uuid

import pytest
from django.test import override_settings

from core.errors import ProviderPermanentError, ProviderTransientError
from rooms.providers import chat_lookup, chat_send
from sandbox.client import SandboxClient

pytestmark = pytest.mark.integration


def send(key: str, sequence: int = 1) -> tuple[str, bool]:
    result = chat_send(room="client-room", body=f"message {sequence}", idempotency_key=key, sequence=sequence,
                       callback_url="http://127.0.0.1:9/unused")
    return result.provider_message_id, result.duplicate


def test_a_send_repeated_under_its_key_is_answered_with_the_first_id_and_found_by_lookup(
    sandbox: SandboxClient,
) -> None:
    with override_settings(ROOMS_CHAT_API_URL=sandbox.url):
        key = str(uuid.uuid4())
        first_id, first_duplicate = send(key)
        assert first_id and first_duplicate is False
        assert send(key) == (first_id, True)
        assert chat_lookup(idempotency_key=key) == first_id
        assert chat_lookup(idempotency_key=str(uuid.uuid4())) is None
    assert len(sandbox.received("chat")) == 1


@pytest.mark.parametrize(("status", "error"), [
    (503, ProviderTransientError), (500, ProviderTransientError), (429, ProviderTransientError),
    (400, ProviderPermanentError), (422, ProviderPermanentError),
])
def test_an_error_answer_is_transient_or_a_refusal_by_its_status(
    sandbox: SandboxClient, status: int, error: type[Exception]
) -> None:
    sandbox.set_knobs("chat", fail_next=1, error_status=status)
    with override_settings(ROOMS_CHAT_API_URL=sandbox.url), pytest.raises(error) as raised:
        send(str(uuid.uuid4()))
    assert str(status) in str(raised.value)
    # The platform's answer travels with the error, for the operator who reads it.
    assert raised.value.response["status"] == status  # type: ignore[attr-defined]
    assert "sandbox failure" in raised.value.response["body"]  # type: ignore[attr-defined]


def test_a_platform_that_is_not_there_or_too_slow_is_transient(sandbox: SandboxClient) -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]  # bound, not listening: the connection is refused
        with override_settings(ROOMS_CHAT_API_URL=f"http://127.0.0.1:{port}"):
            with pytest.raises(ProviderTransientError, match="unreachable"):
                send(str(uuid.uuid4()))
            with pytest.raises(ProviderTransientError, match="unreachable"):
                chat_lookup(idempotency_key=str(uuid.uuid4()))
    sandbox.set_knobs("chat", latency_ms=1000)
    with override_settings(ROOMS_CHAT_API_URL=sandbox.url, ROOMS_CHAT_API_TIMEOUT_SECONDS=0.2), \
            pytest.raises(ProviderTransientError, match="unreachable"):
        send(str(uuid.uuid4()))


def test_a_connection_the_platform_closed_between_sends_is_replaced() -> None:
    """Connections are kept alive between sends; one the platform closed meanwhile (a
    restart, its idle timeout) must not fail the next send. A platform of two answers,
    each on a connection it closes once it has answered (keep-alive announced)."""
    answer = json.dumps({"id": "m-1", "duplicate": False}).encode()
    reply = (b"HTTP/1.1 201 Created\r\nContent-Type: application/json\r\nConnection: keep-alive\r\n"
             b"Content-Length: %d\r\n\r\n%s" % (len(answer), answer))
    closed = [threading.Event(), threading.Event()]
    with socket.create_server(("127.0.0.1", 0)) as server:
        server.settimeout(10)

        def platform() -> None:
            for done in closed:
                connection, _ = server.accept()
                with connection:
                    connection.settimeout(10)
                    request = b""
                    while b"\r\n\r\n" not in request or not request.endswith(b"}"):
                        request += connection.recv(65536)
                    connection.sendall(reply)
                done.set()

        serving = threading.Thread(target=platform, daemon=True)
        serving.start()
        with override_settings(ROOMS_CHAT_API_URL=f"http://127.0.0.1:{server.getsockname()[1]}"):
            assert send(str(uuid.uuid4())) == ("m-1", False)
            assert closed[0].wait(10)
            assert send(str(uuid.uuid4()), 2) == ("m-1", False)
        serving.join(10)
    assert closed[1].is_set()


def test_the_platform_is_called_through_the_proxy_the_environment_names(monkeypatch: pytest.MonkeyPatch) -> None:
    """A stand-in proxy: it answers for the platform and records the request line."""
    answer = json.dumps({"id": "m-proxied", "duplicate": False}).encode()
    lines: list[bytes] = []
    with socket.create_server(("127.0.0.1", 0)) as proxy:
        proxy.settimeout(10)

        def serve() -> None:
            connection, _ = proxy.accept()
            with connection:
                lines.append(connection.recv(65536).split(b"\r\n")[0])
                connection.sendall(b"HTTP/1.1 201 Created\r\nContent-Length: %d\r\n\r\n%s" % (len(answer), answer))

        serving = threading.Thread(target=serve, daemon=True)
        serving.start()
        monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{proxy.getsockname()[1]}")
        for name in ("NO_PROXY", "no_proxy", "http_proxy"):
            monkeypatch.delenv(name, raising=False)
        with override_settings(ROOMS_CHAT_API_URL="http://chat.example.invalid:8080"):
            assert send(str(uuid.uuid4())) == ("m-proxied", False)
        serving.join(10)
    assert lines == [b"POST http://chat.example.invalid:8080/chat/v1/messages HTTP/1.1"]
