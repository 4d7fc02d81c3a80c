"""Parsing and policy of the realtime protocol, without any server."""

import asyncio

import pytest
from django.test import override_settings

from realtime.auth import realtime_token_create, realtime_token_user_id
from realtime.connections import resume_ids_format, resume_ids_parse
from realtime.consumers import CLOSE_SLOW_CONSUMER, RealtimeConsumer, command_parse
from realtime.exceptions import InvalidFrame, InvalidToken, InvalidTopic, TopicRefused
from realtime.frames import HEARTBEAT, Control
from realtime.sse import SseConnection
from realtime.topics import Topic, topic_authorise, topic_parse


@pytest.mark.parametrize("name", ["room:lobby", "live:match-42", "user:7", "room:a.b_c"])
def test_valid_topics_parse(name: str) -> None:
    assert str(topic_parse(name)) == name


@pytest.mark.parametrize(
    "name",
    ["lobby", "room:", "room:has space", "chat:1", "user:alice", "room:" + "x" * 65, 42, None],
)
def test_invalid_topics_are_refused_with_a_reason(name: object) -> None:
    with pytest.raises(InvalidTopic, match="."):
        topic_parse(name)


def test_a_private_topic_is_only_for_its_user_and_nothing_for_anonymous() -> None:
    topic_authorise(topic=Topic("user", "7"), user_id=7)
    topic_authorise(topic=Topic("room", "lobby"), user_id=8)
    with pytest.raises(TopicRefused, match="another user's private topic"):
        topic_authorise(topic=Topic("user", "7"), user_id=8)
    with pytest.raises(TopicRefused, match="log in"):
        topic_authorise(topic=Topic("room", "lobby"), user_id=None)


def test_an_sse_id_round_trips_positions_in_several_topics() -> None:
    ids = {Topic("room", "lobby"): 12, Topic("user", "3"): 40}

    assert resume_ids_format(ids) == "room:lobby=12,user:3=40"
    assert resume_ids_parse("room:lobby=12,user:3=40") == ids
    assert resume_ids_parse("") == {}


@pytest.mark.parametrize(
    "value", ["garbage", "room:lobby=", "room:lobby=-1", "nope=3", "room:lobby=\u00b2", "room:a= 3"]
)
def test_a_bad_sse_id_is_refused(value: str) -> None:
    with pytest.raises((InvalidFrame, InvalidTopic)):
        resume_ids_parse(value)


@pytest.mark.parametrize(
    "text",
    [
        None,
        "",
        "x" * 5000,
        "not json",
        "[]",
        '{"type": "dance"}',
        '{"type": "subscribe"}',
        '{"type": "subscribe", "topic": "room:a", "last_id": "3"}',
        '{"type": "subscribe", "topic": "room:a", "last_id": true}',
        '{"type": "subscribe", "topic": "room:a", "last_id": 99999999999999999999}',
        "[" * 4000,  # deeper than the decoder recurses: RecursionError, not ValueError
        '{"type": "subscribe", "topic": "room:a", "last_id": NaN}',
    ],
)
def test_frames_outside_the_schema_are_invalid(text: str | None) -> None:
    with pytest.raises(InvalidFrame):
        command_parse(text, None)


def test_a_subscribe_frame_parses() -> None:
    frame = '{"type": "subscribe", "topic": "room:a", "last_id": 3}'
    assert command_parse(frame, None)["last_id"] == 3


def test_a_token_names_its_user_and_a_forged_or_expired_one_is_refused() -> None:
    token = realtime_token_create(user_id=5)

    assert realtime_token_user_id(token) == 5
    with pytest.raises(InvalidToken, match="not valid"):
        realtime_token_user_id(token[:-2] + "xx")
    with (
        override_settings(REALTIME_TOKEN_MAX_AGE_SECONDS=-1),
        pytest.raises(InvalidToken, match="expired"),
    ):
        realtime_token_user_id(token)


@override_settings(REALTIME_CONNECTION_BUFFER=2)
def test_a_websocket_whose_buffer_fills_is_closed_as_a_slow_consumer() -> None:
    closed: list[int] = []

    async def scenario() -> None:
        consumer = RealtimeConsumer()
        consumer.closing = False
        consumer.user_id = 1
        consumer.outgoing = asyncio.Queue(2)

        async def record_close(code: int, reason: str) -> None:
            closed.append(code)

        consumer._close = record_close  # type: ignore[method-assign]
        for _ in range(3):  # nobody drains the queue: the writer is stuck on the client
            consumer.offer(HEARTBEAT)
        await asyncio.sleep(0)

    asyncio.run(scenario())

    assert closed == [CLOSE_SLOW_CONSUMER]


@override_settings(REALTIME_CONNECTION_BUFFER=2)
def test_an_event_stream_whose_buffer_fills_ends_with_an_error_event() -> None:
    async def scenario() -> list[str]:
        connection = SseConnection({Topic("room", "a"): None})
        for _ in range(3):
            connection.offer(Control("subscribed", {"topic": "room:a", "id": 0}))
        return [
            connection.encode(connection.outgoing.get_nowait())
            for _ in range(connection.outgoing.qsize())
        ]

    frames = asyncio.run(scenario())

    assert len(frames) == 1
    assert "slow_consumer" in frames[0]
