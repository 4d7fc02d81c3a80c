"""A client that stops reading is closed as a slow consumer (WebSocket 4408, SSE
`slow_consumer`), and until then the server holds a bounded amount for it: its queue and
what daphne's transport has not written, not everything published to it. A client that
reads, on the same topic at the same time, gets every message."""

import random
import uuid

import pytest
import redis
from django.conf import settings
from django.contrib.auth import get_user_model

from realtime.auth import realtime_token_create
from realtime.consumers import CLOSE_SLOW_CONSUMER
from realtime.services import realtime_publish
from realtime.topics import pubsub_channel, topic_parse
from tests.integration.realtime.clients import (
    RawClient,
    ws_client_frame,
    ws_request,
    ws_server_frames,
)
from tests.processes import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True), pytest.mark.database_agnostic]

# Rounds of 100 messages of 1 to 8 KB, each read in full by a client on another daphne
# before the next (a pace any reading client keeps up with: fewer than a queue's frames at
# once), until the server lets the stalled client go. More than one round is needed: the
# kernel's send buffer of the server's socket grows on its own (up to net.ipv4.tcp_wmem's
# maximum, 4 MB by default) and takes its share first.
ROUND, MAX_ROUNDS = 100, 40


def flood_until_gone(topic: str, reader: RawClient) -> int:
    """Publish to `topic` until its connection on the test daphne is gone; return the bytes
    of data published."""
    sizes = random.Random(7)
    total = 0
    for n in range(ROUND * MAX_ROUNDS):
        pad = "x" * sizes.randint(1024, 8192)
        realtime_publish(topic=topic, event="e", data={"n": n, "pad": pad})
        total += len(pad)
        if n % ROUND == ROUND - 1:
            reader.read_until(f'"n":{n},'.encode())
            if connection_gone(topic):
                break
    wait_for(lambda: connection_gone(topic), "the server lets the stalled client go", 30)
    return total


def connection_gone(topic: str) -> bool:
    """Two processes follow `topic`, the test daphne (the stalled client) and the second
    one (the reader): the test daphne's Redis subscription ends when the stalled client's
    subscription is released."""
    channel = pubsub_channel(topic_parse(topic)).encode()
    client = redis.Redis.from_url(settings.REALTIME_REDIS_URL)
    return int(dict(client.pubsub_numsub(channel))[channel]) == 1


def token() -> str:
    user = get_user_model().objects.create_user(f"slow-{uuid.uuid4().hex[:8]}")
    return realtime_token_create(user_id=user.pk)


def ws_subscribed(url: str, topic: str, receive_buffer: int | None = None) -> RawClient:
    client = RawClient(url, ws_request(url, f"/ws/?token={token()}"), receive_buffer)
    client.read_until(b"\r\n\r\n")
    client.sock.sendall(ws_client_frame(f'{{"type": "subscribe", "topic": "{topic}"}}'))
    client.read_until(b'"subscribed"')
    return client


def sse_subscribed(url: str, topic: str, receive_buffer: int | None = None) -> RawClient:
    request = f"GET /events/?topic={topic}&token={token()} HTTP/1.1\nHost: {url[7:]}\n\n"
    client = RawClient(url, request, receive_buffer)
    client.read_until(b"event: subscribed")
    return client



def test_a_websocket_that_stops_reading_is_closed_as_a_slow_consumer(
    daphne_url: str, second_daphne_url: str
) -> None:
    topic = f"room:{uuid.uuid4().hex[:12]}"
    stalled = ws_subscribed(daphne_url, topic, receive_buffer=4096)
    reader = ws_subscribed(second_daphne_url, topic)

    published = flood_until_gone(topic, reader)  # `stalled` reads nothing meanwhile
    received = stalled.read_to_end()
    stalled.close()
    reader.close()

    frames = ws_server_frames(received)
    closes = [payload for opcode, payload in frames if opcode == 0x8]
    assert len(received) < published  # what the server could not send, it dropped
    # The close frame follows what the server still held; a client that does not read
    # within daphne's close handshake timeout (1 s) gets a reset instead.
    if closes:
        assert int.from_bytes(closes[0][:2], "big") == CLOSE_SLOW_CONSUMER


def test_an_event_stream_that_stops_being_read_ends_with_slow_consumer(
    daphne_url: str, second_daphne_url: str
) -> None:
    topic = f"room:{uuid.uuid4().hex[:12]}"
    stalled = sse_subscribed(daphne_url, topic, receive_buffer=4096)
    reader = sse_subscribed(second_daphne_url, topic)

    published = flood_until_gone(topic, reader)  # `stalled` reads nothing meanwhile
    received = stalled.read_until(b"\r\n0\r\n\r\n")  # the end of a chunked response
    stalled.close()
    reader.close()

    assert len(received) < published
    assert b"slow_consumer" in received[-400:]
