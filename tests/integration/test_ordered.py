"""Ordered per-room delivery end to end: shard owner processes (`manage.py rooms_owner`,
one active, one standing by), two daphne web processes that hand acks to the owners,
the sandbox's chat platform counting arrival order, duplicates and the order at the
device. Owners start for each test: the database is emptied between tests, and an
owner holds its shards' rooms in memory. No timing assertion: every wait has a deadline
that only turns a hang into a failure."""

import json
import os
import re
import signal
import threading
import uuid
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import pytest
import requests
from django.db import connection as db_connection
from django.db import transaction
from django.db.models import F
from django.test import override_settings
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from kombu import Consumer

from config.celery import app as critical_app
from rooms import shards
from rooms.exceptions import RoomNotFoundError
from rooms.machine import Send
from rooms.models import ChatProvider, Room, RoomMessage, RoomShard
from rooms.owner import FencedError, Owner
from rooms.services import enqueue
from rooms.services.enqueue import room_create, room_message_enqueue, room_messages_enqueue
from rooms.services.operator import room_message_retry, room_message_skip
from rooms.shards import shard_publish, shard_queues
from sandbox.chat import chat_signed_headers
from sandbox.client import SandboxClient
from tests.integration.conftest import daphne_wait, start_daphne
from tests.processes import ManagedProcess, processes_stop, python, rabbitmqctl, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

Status = RoomMessage.Status
DONE = (Status.ACKED, Status.TIMED_OUT, Status.SKIPPED, Status.FAILED)
SECRET = "sandbox-chat-secret"
# Every wait has this deadline: it only turns a hang into a failure.
ROOMS_TIMEOUT = 90.0


def make_rooms(count: int, *, ack_timeout_ms: int = 20_000, policy: str = "proceed", resends: int = 0) -> list[Room]:
    provider = ChatProvider.objects.create(
        name=f"chat-{uuid.uuid4().hex[:8]}", ack_timeout_ms=ack_timeout_ms, timeout_policy=policy, max_resends=resends
    )
    tag = uuid.uuid4().hex[:6]
    return [room_create(provider_name=provider.name, recipient=f"{tag}-{n}") for n in range(count)]


def all_done(rooms: list[Room]) -> bool:
    return not RoomMessage.objects.filter(room__in=rooms).exclude(status__in=DONE).exists()


def statuses(room: Room) -> list[str]:
    return list(RoomMessage.objects.filter(room=room).order_by("sequence").values_list("status", flat=True))


def post_ack(url: str, message: RoomMessage, *, secret: str = SECRET) -> requests.Response:
    """An ack as a platform that drops the callback URL's query would send it (routed by
    the web process's database read)."""
    body = json.dumps(
        {"type": "message.delivered", "id": message.provider_message_id or "chm_x",
         "room": message.room.recipient, "idempotency_key": str(message.idempotency_key)}
    ).encode()
    return requests.post(
        f"{url}/api/webhooks/chat/", data=body, timeout=10,
        headers={"Content-Type": "application/json", **chat_signed_headers(secret, body)},
    )


@pytest.fixture(scope="module")
def shard_web_urls(django_db_setup: None) -> Iterator[list[str]]:
    """Two daphne processes: either hands an ack to the room's owner."""
    webs = [start_daphne(f"daphne-rooms-{index}", wait=False) for index in range(2)]
    try:
        for process, url in webs:
            daphne_wait(process, url)
        yield [url for _, url in webs]
    finally:
        processes_stop([process for process, _ in webs])


@dataclass
class Owners:
    """Owner processes; the n-th gives the platform the callback URL of web process n % 2."""

    sandbox_url: str
    web_urls: list[str]
    processes: list[ManagedProcess] = field(default_factory=list)

    def start(self, *options: str) -> ManagedProcess:
        """An owner that keeps the shards it is given (the tests that kill "the active
        owner" need one), unless `options` say otherwise."""
        index = len(self.processes)
        process = ManagedProcess(f"rooms-owner-{index}",
                                 python("manage.py", "rooms_owner", "--catch-up-every", "1", "--balance-every", "0",
                                        *options),
                                 env={"ROOMS_CHAT_API_URL": self.sandbox_url,
                                      "CARILLON_PUBLIC_URL": self.web_urls[index % 2],
                                      # names its PostgreSQL sessions, for a test to cut them
                                      "PGAPPNAME": "carillon-rooms-owner"})
        self.processes.append(process)
        process.wait_for_log("consuming the shard queues")
        return process


@pytest.fixture
def owners(sandbox: SandboxClient, shard_web_urls: list[str], transactional_db: None) -> Iterator[Owners]:
    """One owner running (more are started by the tests), a platform that acks within
    ~50 ms, and shard queues emptied of what earlier tests left for rooms now gone."""
    sandbox.set_knobs("chat", callback_delay_ms=30, callback_jitter_ms=20)
    with critical_app.connection_for_write() as connection:
        for queue in shard_queues():
            queue(connection.default_channel).declare()
            queue(connection.default_channel).purge()
    running = Owners(sandbox.url, shard_web_urls)
    running.start()
    try:
        yield running
    finally:
        processes_stop(running.processes)  # before the database is emptied


def enqueue_all(rooms: list[Room], count: int, start: int = 0) -> None:
    for n in range(start, start + count):  # interleaved, as concurrent API requests would
        for room in rooms:
            room_message_enqueue(room_id=room.pk, body=f"message {n}")


def test_order_is_kept_in_every_room_and_a_clean_stop_hands_the_shards_over(
    owners: Owners, sandbox: SandboxClient
) -> None:
    first, standby = owners.processes[0], owners.start()
    rooms = make_rooms(20)
    enqueue_all(rooms, 4)
    wait_for(lambda: RoomMessage.objects.filter(status=Status.ACKED).count() >= 20, "some messages acked",
             ROOMS_TIMEOUT)

    first.stop()  # SIGTERM: it records what it has, and RabbitMQ gives its shards to the standby
    enqueue_all(rooms, 4, start=4)
    wait_for(lambda: all_done(rooms), "every message acked", ROOMS_TIMEOUT)

    seen = sandbox.chat_rooms()
    assert (seen["order_violations"], seen["delivery_order_violations"], seen["duplicates"]) == (0, 0, 0)
    for room in rooms:
        assert seen["rooms"][room.recipient]["arrivals"] == list(range(1, 9))
        assert statuses(room) == [Status.ACKED] * 8
    assert "took shard" in standby.log()
    # Its start-up heap is left out of garbage collection (core/heap.py).
    frozen = re.search(r"\((\d+) objects of start-up left out of garbage collection\)", standby.log())
    assert frozen is not None and int(frozen.group(1)) > 50_000
    # Every shard the standby took was taken again, at a newer epoch than the first owner's.
    taken = RoomShard.objects.filter(owner__endswith=f":{standby.process.pid}")
    assert taken.exists() and all(shard.epoch >= 2 for shard in taken)


def test_messages_enqueued_together_reach_each_room_in_order(owners: Owners, sandbox: SandboxClient) -> None:
    rooms = make_rooms(10)
    room_message_enqueue(room_id=rooms[0].pk, body="message 0")

    room_messages_enqueue(messages=[(room.pk, f"message {n}") for n in range(1, 4) for room in rooms])
    wait_for(lambda: all_done(rooms), "every message acked", ROOMS_TIMEOUT)

    seen = sandbox.chat_rooms()
    assert (seen["order_violations"], seen["delivery_order_violations"], seen["duplicates"]) == (0, 0, 0)
    assert seen["rooms"][rooms[0].recipient]["arrivals"] == [1, 2, 3, 4]
    for room in rooms[1:]:
        assert seen["rooms"][room.recipient]["arrivals"] == [1, 2, 3]
        assert statuses(room) == [Status.ACKED] * 3


def test_a_killed_owner_s_rooms_go_on_from_the_standby_with_no_duplicate(
    owners: Owners, sandbox: SandboxClient
) -> None:
    # The platform takes the message at once but answers after 2 s and acks after 3 s:
    # the owner is killed after the platform has the first message, before it heard so.
    # The standby finds the send in doubt, asks the platform, and does not send it again.
    active = owners.processes[0]
    standby = owners.start()
    sandbox.set_knobs("chat", latency_ms=2000, callback_delay_ms=3000, callback_jitter_ms=0)
    (room,) = make_rooms(1)
    enqueue_all([room], 3)
    wait_for(lambda: room.recipient in sandbox.chat_rooms()["rooms"], "first message at the platform", ROOMS_TIMEOUT)

    active.kill()
    sandbox.set_knobs("chat", latency_ms=0, callback_delay_ms=30)
    wait_for(lambda: all_done([room]), "every message acked", ROOMS_TIMEOUT)

    seen = sandbox.chat_rooms()
    assert seen["rooms"][room.recipient]["arrivals"] == [1, 2, 3]
    assert (seen["order_violations"], seen["duplicates"]) == (0, 0)
    assert statuses(room) == [Status.ACKED] * 3
    assert "1 sends in doubt" in standby.log()
    # The first ack went to the dead owner's web process, the others to the standby's:
    # both handed them to whichever process owns the room's shard.
    assert RoomMessage.objects.filter(room=room).exclude(provider_message_id="").count() == 3


def shards_held() -> dict[int, int]:
    """How many shards each owner process (by pid) took last."""
    held: dict[int, int] = {}
    for owner in RoomShard.objects.values_list("owner", flat=True):
        pid = int(owner.rsplit(":", 1)[1])
        held[pid] = held.get(pid, 0) + 1
    return held


def test_two_owners_share_the_shards_while_messages_flow_and_a_killed_one_s_share_goes_to_the_other(
    owners: Owners, sandbox: SandboxClient
) -> None:
    processes_stop(owners.processes)
    first = owners.start("--balance-every", "0.2")
    # Slow sends and acks and a message into every room every 0.3 s until the shards are
    # shared, so that they change hands with messages queued and calls in progress.
    sandbox.set_knobs("chat", latency_ms=150, callback_delay_ms=150, callback_jitter_ms=0)
    rooms = make_rooms(20)
    shared = threading.Event()

    def keep_enqueuing() -> int:
        rounds = 0
        while not shared.is_set():
            enqueue_all(rooms, 1, start=rounds)
            rounds += 1
            shared.wait(0.3)
        db_connection.close()  # this thread's
        return rounds

    with ThreadPoolExecutor(1) as pool:
        enqueuing = pool.submit(keep_enqueuing)
        try:
            second = owners.start("--balance-every", "0.2")
            pids = (first.process.pid, second.process.pid)
            wait_for(lambda: shards_held() == dict.fromkeys(pids, 8), "8 shards each", ROOMS_TIMEOUT)
        finally:
            shared.set()
        rounds = enqueuing.result()
    # (Which shards the first handed over, and in how many steps, depends on when it
    # stopped counting the fixture's owner, stopped just before: only that it did. So
    # does the epoch the second takes one at: 3 if the fixture's owner had taken it.)
    assert "handed shard" in first.log()
    assert re.search(r"took shard \d+ at epoch \d+ \([1-9]\d* rooms with messages", second.log())

    first.kill()
    sandbox.set_knobs("chat", latency_ms=0, callback_delay_ms=30)
    enqueue_all(rooms, 3, start=rounds)
    wait_for(lambda: all_done(rooms), "every message acked", ROOMS_TIMEOUT)

    seen = sandbox.chat_rooms()
    assert (seen["order_violations"], seen["delivery_order_violations"], seen["duplicates"]) == (0, 0, 0)
    for room in rooms:
        assert seen["rooms"][room.recipient]["arrivals"] == list(range(1, rounds + 4))
        assert statuses(room) == [Status.ACKED] * (rounds + 3)
    # Every shard, once a tick from it reached the survivor (shards the last messages did
    # not touch may be taken a moment after they finished).
    wait_for(lambda: shards_held() == {second.process.pid: 16}, "all 16 shards with the survivor", ROOMS_TIMEOUT)


def test_a_lost_ack_times_out_then_the_next_message_goes(owners: Owners, sandbox: SandboxClient) -> None:
    sandbox.set_knobs("chat", callback_loss_rate=1.0)
    (proceed_room,) = make_rooms(1, ack_timeout_ms=300, policy="proceed")
    (resend_room,) = make_rooms(1, ack_timeout_ms=300, policy="resend", resends=1)
    enqueue_all([proceed_room, resend_room], 3)

    wait_for(lambda: all_done([proceed_room, resend_room]), "every message timed out", ROOMS_TIMEOUT)

    seen = sandbox.chat_rooms()["rooms"]
    for room in (proceed_room, resend_room):
        assert statuses(room) == [Status.TIMED_OUT] * 3
        assert Room.objects.get(pk=room.pk).timeouts == 3
        assert seen[room.recipient]["arrivals"] == [1, 2, 3]
    assert seen[proceed_room.recipient]["duplicates"] == 0
    # One resend per message, deduplicated by the platform on the idempotency key.
    assert seen[resend_room.recipient]["duplicates"] == 3


def test_an_ack_sent_before_the_timeout_but_queued_behind_other_inputs_is_taken_not_timed_out(
    owners: Owners, sandbox: SandboxClient, shard_web_urls: list[str]
) -> None:
    # An owner reading one input at a time, frozen while three inputs and then the ack
    # reach its shard's queue before the deadline: it reads the ack only after the
    # deadline has passed. The ack came in time, so the message is acked.
    processes_stop(owners.processes)
    owner = owners.start("--prefetch", "1")
    sandbox.set_knobs("chat", callback_loss_rate=1.0)
    rooms = make_rooms(4, ack_timeout_ms=2000)
    Room.objects.filter(pk__in=[room.pk for room in rooms]).update(shard=rooms[0].shard)
    target, others = rooms[0], rooms[1:]
    message = room_message_enqueue(room_id=target.pk, body="acked in time")
    sent_at = wait_for(lambda: RoomMessage.objects.get(pk=message.pk).sent_at, "message sent", ROOMS_TIMEOUT)
    deadline = sent_at + timedelta(milliseconds=2000)

    os.kill(owner.process.pid, signal.SIGSTOP)
    try:
        for room in others:
            room_message_enqueue(room_id=room.pk, body="ahead of the ack")
        answer = post_ack(shard_web_urls[0], RoomMessage.objects.get(pk=message.pk))
        assert timezone.now() < deadline, "the ack must reach the queue before the deadline"
        wait_for(lambda: timezone.now() > deadline + timedelta(milliseconds=200), "the deadline passed", 10)
    finally:
        os.kill(owner.process.pid, signal.SIGCONT)
    wait_for(lambda: all_done(rooms), "every message ended", ROOMS_TIMEOUT)

    assert answer.status_code == 202
    assert statuses(target) == [Status.ACKED]
    assert Room.objects.get(pk=target.pk).timeouts == 0


def test_duplicate_and_late_acks_change_nothing(
    owners: Owners, sandbox: SandboxClient, shard_web_urls: list[str]
) -> None:
    (room,) = make_rooms(1, ack_timeout_ms=1000)
    first = room_message_enqueue(room_id=room.pk, body="acked")
    wait_for(lambda: all_done([room]), "first message acked", ROOMS_TIMEOUT)
    sandbox.set_knobs("chat", callback_loss_rate=1.0)
    late = room_message_enqueue(room_id=room.pk, body="times out")
    wait_for(lambda: all_done([room]), "second message timed out", ROOMS_TIMEOUT)
    in_flight = room_message_enqueue(room_id=room.pk, body="in flight while the old acks come again")
    wait_for(lambda: RoomMessage.objects.get(pk=in_flight.pk).attempts, "third message in flight", ROOMS_TIMEOUT)
    finished = {m.pk: (m.status, m.finished_at) for m in (RoomMessage.objects.get(pk=first.pk),
                                                           RoomMessage.objects.get(pk=late.pk))}

    answers = [post_ack(url, message) for url in shard_web_urls for message in (first, late)]
    # The fourth message's input comes after the four acks on the shard's queue: once it
    # has ended, the owner has read them.
    room_message_enqueue(room_id=room.pk, body="after them")
    wait_for(lambda: all_done([room]) and len(statuses(room)) == 4, "every message ended", ROOMS_TIMEOUT)

    assert [(answer.status_code, answer.json()["status"]) for answer in answers] == [(202, "accepted")] * 4
    # None of the old acks was taken for the message in flight: it timed out, as every
    # message does once the platform loses every ack.
    assert statuses(room) == [Status.ACKED, Status.TIMED_OUT, Status.TIMED_OUT, Status.TIMED_OUT]
    assert {m.pk: (m.status, m.finished_at) for m in RoomMessage.objects.filter(pk__in=finished)} == finished


def test_forged_webhooks_get_403_and_reach_no_owner(owners: Owners, sandbox: SandboxClient,
                                                     shard_web_urls: list[str]) -> None:
    sandbox.set_knobs("chat", callback_loss_rate=1.0)
    (room,) = make_rooms(1)
    message = room_message_enqueue(room_id=room.pk, body="waits")
    wait_for(lambda: RoomMessage.objects.get(pk=message.pk).sent_at, "message sent", ROOMS_TIMEOUT)

    forged = [post_ack(url, message, secret="guessed") for url in shard_web_urls]

    assert [r.status_code for r in forged] == [403, 403]
    assert {r.json()["error"] for r in forged} == {"invalid_signature"}
    assert statuses(room) == [Status.IN_FLIGHT]


def test_a_slow_room_does_not_hold_back_the_others(owners: Owners, sandbox: SandboxClient) -> None:
    slow = make_rooms(3, ack_timeout_ms=600_000)
    fast = make_rooms(8)
    for room in slow:
        sandbox.set_chat_room(room.recipient, callback_delay_ms=300_000)
    enqueue_all([*slow, *fast], 4)

    wait_for(lambda: all_done(fast), "every fast room done", ROOMS_TIMEOUT)

    seen = sandbox.chat_rooms()
    for room in fast:
        assert seen["rooms"][room.recipient]["arrivals"] == [1, 2, 3, 4]
    for room in slow:  # each still waits for its first ack, the rest queued behind it
        assert statuses(room) == [Status.IN_FLIGHT, Status.QUEUED, Status.QUEUED, Status.QUEUED]
        assert seen["rooms"][room.recipient]["arrivals"] == [1]


def test_a_room_deleted_with_a_message_in_flight_sends_nothing_more(
    owners: Owners, sandbox: SandboxClient
) -> None:
    # The deleted room's first message times out at 1.5 s, which would put its second
    # in flight; the marker room's first times out a second later, after it, on the same
    # owner's clock. Once the marker's second message is at the platform, the deleted
    # room's would have been too.
    (deleted,) = make_rooms(1, ack_timeout_ms=1500)
    (marker,) = make_rooms(1, ack_timeout_ms=2500)
    for room in (deleted, marker):
        sandbox.set_chat_room(room.recipient, callback_delay_ms=300_000)
    enqueue_all([deleted], 3)
    wait_for(lambda: RoomMessage.objects.filter(room=deleted, sent_at__isnull=False).exists(),
             "the first message sent", ROOMS_TIMEOUT)

    Room.objects.filter(pk=deleted.pk).delete()  # as the admin does, with its messages
    enqueue_all([marker], 2)
    wait_for(lambda: sandbox.chat_rooms()["rooms"].get(marker.recipient, {}).get("arrivals") == [1, 2],
             "the marker room's second message at the platform", ROOMS_TIMEOUT)

    assert sandbox.chat_rooms()["rooms"][deleted.recipient]["arrivals"] == [1]
    owner = owners.processes[0]
    assert f"room {deleted.pk} was deleted" in owner.log()
    assert "letting go" not in owner.log()


def test_operators_retry_and_skip_through_the_owner(owners: Owners, sandbox: SandboxClient) -> None:
    (room,) = make_rooms(1)
    sandbox.set_chat_room(room.recipient, callback_delay_ms=300_000)
    first, second = (room_message_enqueue(room_id=room.pk, body=f"m{n}") for n in range(2))
    wait_for(lambda: RoomMessage.objects.get(pk=first.pk).sent_at, "first message sent", ROOMS_TIMEOUT)

    assert room_message_retry(message_id=first.pk)
    wait_for(lambda: RoomMessage.objects.get(pk=first.pk).attempts == 2, "first message resent", ROOMS_TIMEOUT)
    assert room_message_skip(message_id=first.pk)
    wait_for(lambda: statuses(room) == [Status.SKIPPED, Status.IN_FLIGHT], "second message in flight",
             ROOMS_TIMEOUT)

    # The owner records the state before it calls the platform: wait for the calls.
    # The retry is deduplicated by the platform on the message's key.
    wait_for(lambda: sandbox.chat_rooms()["rooms"][room.recipient] | {"callback_delay_ms": None}
             == {"arrivals": [1, 2], "duplicates": 1, "order_violations": 0, "delivery_order_violations": 0,
                 "callback_delay_ms": None},
             "the retry and the second message at the platform", ROOMS_TIMEOUT)
    assert not room_message_retry(message_id=first.pk)  # skipped: nothing to ask
    assert room_message_skip(message_id=second.pk)


def test_a_message_whose_input_was_never_published_is_found_and_sent(
    owners: Owners, sandbox: SandboxClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    (room,) = make_rooms(1)

    def broker_away(*args: object, **kwargs: object) -> None:
        raise OSError("connection refused")

    with monkeypatch.context() as patch:
        patch.setattr(enqueue, "shard_publish", broker_away)
        message = room_message_enqueue(room_id=room.pk, body="committed, never announced")
    assert statuses(room) == [Status.QUEUED]

    wait_for(lambda: all_done([room]), "the owner's periodic check sends it", ROOMS_TIMEOUT)

    assert RoomMessage.objects.get(pk=message.pk).status == Status.ACKED
    assert sandbox.chat_rooms()["rooms"][room.recipient]["arrivals"] == [1]


def test_rooms_let_go_of_when_idle_go_on_from_the_record_and_a_repeated_input_sends_nothing(
    owners: Owners, sandbox: SandboxClient
) -> None:
    processes_stop(owners.processes)
    owners.start("--idle-rooms", "0")  # every room leaves memory once idle and written
    rooms = make_rooms(3)
    for round_ in range(3):
        enqueue_all(rooms, 1, start=round_)
        wait_for(lambda: all_done(rooms), f"round {round_} acked", ROOMS_TIMEOUT)
    # The input of a message long acked, again (a publish retried after its confirm was
    # lost): the owner no longer holds the room and reads it back; nothing is resent.
    first = RoomMessage.objects.get(room=rooms[0], sequence=1)
    shard_publish([(rooms[0].shard, enqueued_input(first))])
    enqueue_all(rooms, 1, start=3)
    wait_for(lambda: all_done(rooms), "the last round acked", ROOMS_TIMEOUT)

    seen = sandbox.chat_rooms()
    assert (seen["order_violations"], seen["delivery_order_violations"], seen["duplicates"]) == (0, 0, 0)
    for room in rooms:
        assert seen["rooms"][room.recipient]["arrivals"] == [1, 2, 3, 4]
        assert statuses(room) == [Status.ACKED] * 4


def test_an_owner_holds_only_busy_rooms_lets_idle_ones_go_and_finds_a_missed_message_by_what_is_queued(
    transactional_db: None, sandbox: SandboxClient
) -> None:
    """In this process: taking a shard reads back only its rooms with messages queued or
    in flight; a room gone idle leaves memory once written (no idle room kept here); the
    periodic check reads the queued messages, not the rooms."""
    rooms = make_rooms(5)
    Room.objects.filter(pk__in=[room.pk for room in rooms]).update(shard=3)
    for room in rooms:
        room.refresh_from_db()
        room_message_enqueue(room_id=room.pk, body="first")
    idle, queued, sent = rooms[:3], rooms[3], rooms[4]
    RoomMessage.objects.filter(room__in=idle).update(status=Status.ACKED)
    RoomMessage.objects.filter(room=sent).update(status=Status.IN_FLIGHT, attempts=1, sent_at=timezone.now())
    owner = Owner(idle_rooms=0, send_threads=1)
    try:
        owner._take(3)
        assert sorted(owner.machine.rooms) == sorted([queued.pk, sent.pk])

        # The platform acks the message in flight: the room, idle once that is written, goes.
        key = str(RoomMessage.objects.get(room=sent).idempotency_key)
        assert owner.machine.acked(sent.pk, key, "chm_1", timezone.now())
        owner._flush()
        assert RoomMessage.objects.get(room=sent).status == Status.ACKED
        assert sorted(owner.machine.rooms) == [queued.pk]

        # Committed, its input never published, in a room the owner does not hold.
        missed = room_message_enqueue(room_id=idle[0].pk, body="missed")
        RoomMessage.objects.filter(pk=missed.pk).update(enqueued_at=timezone.now() - timedelta(minutes=1))
        owner._catch_up_all()
        assert sorted(owner.machine.rooms) == sorted([idle[0].pk, queued.pk])
        assert Send(idle[0].pk, missed.pk, 1) in owner.machine.record.sends
    finally:
        owner.close()


def enqueued_input(message: RoomMessage) -> dict[str, Any]:
    """The input the enqueue publishes for a message (rooms.services.enqueue)."""
    room = message.room
    return {"kind": "enqueued", "shard": room.shard, "room": room.pk, "provider": room.provider_id,
            "recipient": room.recipient, "message": message.pk, "sequence": message.sequence,
            "key": str(message.idempotency_key), "body": message.body}


def message_reads(queries: CaptureQueriesContext) -> list[str]:
    table = RoomMessage._meta.db_table
    return [query["sql"] for query in queries if query["sql"].startswith("SELECT") and table in query["sql"]]


def test_an_owner_reads_back_only_rooms_that_have_a_past_it_may_not_know(
    transactional_db: None, sandbox: SandboxClient
) -> None:
    """In this process: the first input of a room created after the owner took its shard
    is applied without reading the record (no owner can have sent for it before); a room
    that existed, or that the owner let go from memory, is read back, and a repeated input
    of a message already done sends nothing."""
    (before,) = make_rooms(1)
    Room.objects.filter(pk=before.pk).update(shard=3)
    done = room_message_enqueue(room_id=before.pk, body="done before the take")
    RoomMessage.objects.filter(pk=done.pk).update(status=Status.ACKED)
    owner = Owner(idle_rooms=0, send_threads=1)
    try:
        owner._take(3)
        (fresh,) = make_rooms(1)
        Room.objects.filter(pk=fresh.pk).update(shard=3)
        first = room_message_enqueue(room_id=fresh.pk, body="first of a new room")

        with CaptureQueriesContext(db_connection) as queries:
            owner.inputs = [enqueued_input(first)]
            owner._apply_inputs()
        assert message_reads(queries) == []
        assert Send(fresh.pk, first.pk, 1) in owner.machine.record.sends

        # Redelivered after its message was done (an owner that died before acknowledging it).
        with CaptureQueriesContext(db_connection) as queries:
            owner.inputs = [enqueued_input(done)]
            owner._apply_inputs()
        assert len(message_reads(queries)) == 1
        assert not [send for send in owner.machine.record.sends if send.room_id == before.pk]

        # The new room's message acked, the room let go from memory once idle: a repeat of
        # its input is read back, and sends nothing.
        owner._flush()
        assert owner.machine.acked(fresh.pk, str(first.idempotency_key), "chm_1", timezone.now())
        owner._flush()
        assert fresh.pk not in owner.machine.rooms
        with CaptureQueriesContext(db_connection) as queries:
            owner.inputs = [enqueued_input(first)]
            owner._apply_inputs()
        assert len(message_reads(queries)) == 1
        assert not owner.machine.record.sends
    finally:
        owner._drain_calls()
        owner.close()


@contextmanager
def enqueue_in_progress(room: Room, monkeypatch: pytest.MonkeyPatch) -> Iterator[list[BaseException]]:
    """An enqueue into `room`, in a thread of its own, held between numbering its message
    and committing while the block runs; then let go. Yields what it raised, filled once
    the block is over."""
    numbered, release = threading.Event(), threading.Event()
    number = enqueue._rooms_next_sequences

    def numbered_then_held(counts: Mapping[int, int]) -> Any:
        answer = number(counts)
        numbered.set()
        release.wait(ROOMS_TIMEOUT)
        return answer

    monkeypatch.setattr(enqueue, "_rooms_next_sequences", numbered_then_held)
    raised: list[BaseException] = []

    def enqueue_now() -> None:
        try:
            room_message_enqueue(room_id=room.pk, body="held before its commit")
        except BaseException as exc:  # noqa: BLE001 - what the caller would get, for the test
            raised.append(exc)
        finally:
            db_connection.close()  # this thread's

    enqueuing = threading.Thread(target=enqueue_now)
    enqueuing.start()
    try:
        assert numbered.wait(ROOMS_TIMEOUT)
        yield raised
    finally:
        release.set()
        enqueuing.join()


@pytest.mark.skipif(db_connection.vendor != "postgresql", reason="SQLite serialises every write transaction")
def test_an_enqueue_in_progress_does_not_hold_up_the_owner_writing_its_room(
    transactional_db: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The enqueue keeps its room's counter locked until it commits; the owner's group
    commit, which writes the room's state at every send, must not wait for it."""
    (room,) = make_rooms(1)
    with enqueue_in_progress(room, monkeypatch) as raised:
        with transaction.atomic():
            with db_connection.cursor() as cursor:
                cursor.execute("SET LOCAL lock_timeout = '2s'")  # a wait fails the test
            # What the owner's commit writes of a room at a send.
            assert Room.objects.filter(pk=room.pk).update(attempt=1, version=F("version") + 1) == 1
    assert raised == []
    assert RoomMessage.objects.get(room=room).sequence == 1


@pytest.mark.skipif(db_connection.vendor != "postgresql", reason="SQLite serialises every write transaction")
def test_an_enqueue_into_a_room_deleted_meanwhile_says_the_room_does_not_exist(
    transactional_db: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    (room,) = make_rooms(1)
    with enqueue_in_progress(room, monkeypatch) as raised:
        Room.objects.filter(pk=room.pk).delete()
    assert [type(exc) for exc in raised] == [RoomNotFoundError]
    assert not RoomMessage.objects.filter(room_id=room.pk).exists()


def numbered(room: Room) -> list[tuple[int, str]]:
    return list(RoomMessage.objects.filter(room=room).order_by("sequence").values_list("sequence", "body"))


def test_concurrent_enqueues_of_rooms_in_either_order_keep_each_room_gapless_and_in_order(
    transactional_db: None,
) -> None:
    """Each caller's messages into a room keep its order, and the counters are locked in
    one order whatever order the rooms are named in (else two such enqueues on
    PostgreSQL can deadlock)."""
    room, other = make_rooms(2)
    rounds, raised = 15, []

    def enqueue_from(caller: int) -> None:
        try:
            for n in range(rounds):
                first, second = (room, other) if (caller + n) % 2 else (other, room)
                if caller == 3:
                    room_message_enqueue(room_id=first.pk, body=f"{caller}:{n}")
                else:
                    room_messages_enqueue(messages=[(first.pk, f"{caller}:{n}"), (second.pk, f"{caller}:{n}")])
        except BaseException as exc:  # noqa: BLE001 - what the caller would get, for the test
            raised.append(exc)
        finally:
            db_connection.close()  # this thread's

    callers = [threading.Thread(target=enqueue_from, args=(caller,)) for caller in range(4)]
    for thread in callers:
        thread.start()
    for thread in callers:
        thread.join()

    assert raised == []
    for each in (room, other):
        messages = numbered(each)
        assert [sequence for sequence, _ in messages] == list(range(1, len(messages) + 1))
        for caller in range(4):
            mine = [int(body.split(":")[1]) for _, body in messages if body.startswith(f"{caller}:")]
            assert mine == sorted(mine)
    assert len(numbered(room)) + len(numbered(other)) == 3 * rounds * 2 + rounds


def test_a_hand_over_cut_short_leaves_the_owner_sending_when_it_holds_the_shard_again(
    transactional_db: None, sandbox: SandboxClient
) -> None:
    """In this process: an owner loses its connection while handing a shard over (its
    commit fails, say). Once it holds the shard again, it sends for its rooms."""
    (room,) = make_rooms(1)
    message = room_message_enqueue(room_id=room.pk, body="after the cut")
    owner = Owner(send_threads=1)
    try:
        owner.leaving.add(room.shard)  # where `_hand_over` was when its commit failed
        owner._release()
        owner._take(room.shard)
        owner._flush()
        assert Send(room.pk, message.pk, 1) in owner.calling
    finally:
        owner.close()


def test_an_owner_whose_shard_was_taken_writes_nothing_and_calls_nothing(transactional_db: None) -> None:
    """In this process: the group commit checks the shards' epochs in the transaction
    that writes their rows. An owner whose shard another took since (a higher epoch)
    raises, and neither the room nor its message changes; once it takes the shard
    again, the same decision is written and the call made."""
    (room,) = make_rooms(1)
    message = room_message_enqueue(room_id=room.pk, body="fenced")
    owner = Owner(send_threads=1)
    try:
        owner._take(room.shard)  # reads the room back: its queued message goes in flight
        RoomShard.objects.filter(shard=room.shard).update(epoch=F("epoch") + 1)  # another owner took it
        with pytest.raises(FencedError):
            owner._flush()
        assert owner.calling == set()
        assert Room.objects.values_list("version", "in_flight_id").get(pk=room.pk) == (room.version, None)
        assert RoomMessage.objects.values_list("status", "attempts").get(pk=message.pk) == (Status.QUEUED, 0)

        owner._release()
        owner._take(room.shard)
        owner._flush()
        assert Room.objects.values_list("version", "in_flight_id").get(pk=room.pk) == (room.version + 1, message.pk)
        assert Send(room.pk, message.pk, 1) in owner.calling
    finally:
        owner.close()


def test_while_a_call_is_out_the_owner_does_not_poll_for_its_answer(
    transactional_db: None, sandbox: SandboxClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In this process: the loop waits on RabbitMQ's socket (an answer that needs action
    wakes it; one that only says "sent" is taken on the next pass). A loop that polled
    for answers every 2 ms woke ~185 times during this half-second call, for nothing."""
    sandbox.set_knobs("chat", latency_ms=500)
    (room,) = make_rooms(1)
    message = room_message_enqueue(room_id=room.pk, body="answered slowly")
    owner = Owner(send_threads=1, balance_every=0)
    reads_while_calling: list[int] = []
    read = owner._read

    def counted(connection: Any) -> None:
        reads_while_calling.extend([1] if owner.calling else [])
        read(connection)

    monkeypatch.setattr(owner, "_read", counted)
    stop = threading.Event()

    def run() -> None:
        try:
            owner.run(stop)
        finally:
            db_connection.close()  # this thread's

    with override_settings(ROOMS_CHAT_API_URL=sandbox.url):
        running = threading.Thread(target=run)
        running.start()
        try:
            wait_for(lambda: RoomMessage.objects.filter(pk=message.pk, sent_at__isnull=False).exists(),
                     "the platform's answer recorded", ROOMS_TIMEOUT)
        finally:
            stop.set()
            running.join(ROOMS_TIMEOUT)
    assert len(sandbox.received("chat")) == 1
    # Woken by the 16 shards' ticks each second, and at most every 50 ms when nothing
    # comes (its longest wait): a few dozen at most.
    assert 0 < len(reads_while_calling) < 60


def test_the_owner_waits_on_a_socket_numbered_past_select_s_limit(transactional_db: None) -> None:
    """In this process: select() refuses descriptors past 1023, and an owner may hold more
    than a thousand (kept platform connections, per provider). Its connection to RabbitMQ
    numbered past that, the owner's wait must work, not raise out of its loop."""
    held = [os.open(os.devnull, os.O_RDONLY) for _ in range(1100)]
    owner = Owner(send_threads=1, balance_every=0)
    try:
        with critical_app.connection_for_read() as connection:
            connection.ensure_connection(max_retries=1)
            assert connection.connection.sock.fileno() > 1024
            owner._read(connection)  # nothing to read: it waits its idle time and returns
    finally:
        owner.close()
        for fd in held:
            os.close(fd)


def test_inputs_delivered_to_an_owner_while_it_hands_a_shard_over_go_in_order_to_the_next_owner(
    transactional_db: None,
) -> None:
    """In this process: RabbitMQ goes on delivering a shard's inputs to the owner handing
    it over until it confirms the cancel. Those inputs go back to the queue unapplied,
    and the owner next in line reads all of them, in their order."""
    shard, count = 5, 3
    queue = shard_queues()[shard]
    owner = Owner(send_threads=1, balance_every=0)
    with critical_app.connection_for_read() as connection, critical_app.connection_for_read() as standby:
        queue(connection.default_channel).declare()
        queue(connection.default_channel).purge()
        channel = connection.channel()
        channel.basic_qos(0, owner.prefetch, False)
        owner._take(shard)
        owner._consume(channel, shard)  # the queue's active consumer: the first
        read: list[dict[str, Any]] = []

        def next_owner(body: dict[str, Any], message: Any) -> None:
            read.append(body)
            message.ack()

        with Consumer(standby.channel(), queues=[queue], accept=["json"], callbacks=[next_owner]):
            for n in range(count):
                shard_publish([(shard, {"kind": "tick", "shard": shard, "owner": f"input-{n}", "sent_at": n})])
            # Delivered to the owner, which has not read them yet: they wait on its socket
            # and come while it waits for RabbitMQ to confirm the cancel.
            wait_for(lambda: queue(standby.default_channel).queue_declare(passive=True).message_count == 0,
                     "the inputs delivered to the owner", ROOMS_TIMEOUT)
            owner._hand_over(shard, channel)

            def all_read() -> bool:
                try:
                    standby.drain_events(timeout=0.5)
                except TimeoutError:
                    pass
                return len(read) >= count

            wait_for(all_read, "the next owner read the inputs", ROOMS_TIMEOUT)
    owner.close()

    assert [body["owner"] for body in read] == [f"input-{n}" for n in range(count)]
    assert owner.inputs == []  # none applied by the owner that handed the shard over
    assert shard not in owner.epochs


def test_an_input_published_before_any_owner_declared_its_queue_reaches_the_queue(transactional_db: None) -> None:
    # A web process or an enqueue may start before any owner: its first connection
    # declares the shard queues, or RabbitMQ would drop the input as unroutable.
    queue = shard_queues()[5]
    with critical_app.connection_for_write() as connection:
        queue(connection.default_channel).delete()
        shards._publisher._reset()  # as in a process starting now

        shard_publish([(5, {"kind": "tick", "shard": 5})])

        assert queue(connection.default_channel).queue_declare(passive=True).message_count == 1
        queue(connection.default_channel).purge()


def test_the_first_input_after_rabbitmq_restarted_is_taken(transactional_db: None) -> None:
    # A process's pooled connection outlives a RabbitMQ restart, dead: an ack handed over
    # on it must not be answered 503 (a platform that does not retry would lose it).
    tick = {"kind": "tick", "shard": 0}
    shard_publish([(0, tick)])  # the pooled connection is open
    rabbitmqctl("stop_app")
    rabbitmqctl("start_app")
    with critical_app.connection_for_write() as connection:
        queued = shard_queues()[0](connection.default_channel).queue_declare(passive=True).message_count

        shard_publish([(0, tick)])

        assert shard_queues()[0](connection.default_channel).queue_declare(passive=True).message_count == queued + 1


def test_rabbitmq_restarted_under_the_owners_loses_nothing_and_reorders_nothing(
    owners: Owners, sandbox: SandboxClient
) -> None:
    # Enqueues while RabbitMQ is away are committed and found by the owners' periodic
    # check; acks the web processes could not hand over are answered 503 (the sandbox
    # does not retry them), so their messages end by timeout, in order.
    owners.start()
    rooms = make_rooms(6, ack_timeout_ms=1000)
    enqueue_all(rooms, 2)

    rabbitmqctl("stop_app")
    try:
        enqueue_all(rooms[:2], 1, start=2)  # each waits for the publish to fail: two are enough
    finally:
        rabbitmqctl("start_app")
    enqueue_all(rooms, 2, start=3)

    wait_for(lambda: all_done(rooms), "every message acked or timed out", ROOMS_TIMEOUT)

    seen = sandbox.chat_rooms()
    assert (seen["order_violations"], seen["delivery_order_violations"], seen["duplicates"]) == (0, 0, 0)
    for room in rooms:
        assert seen["rooms"][room.recipient]["arrivals"] == list(range(1, 6 if room in rooms[:2] else 5))
        assert set(statuses(room)) <= {Status.ACKED, Status.TIMED_OUT}


def test_the_owners_database_connection_cut_loses_nothing_and_reorders_nothing(
    owners: Owners, sandbox: SandboxClient
) -> None:
    # What a PostgreSQL restart or failover does to an owner: its session ends under it.
    # The owner lets go of its shards and takes them again from the record; its inputs
    # not yet acknowledged come back from RabbitMQ, its sends in doubt are looked up.
    if db_connection.vendor != "postgresql":
        pytest.skip("SQLite is embedded: there is no server whose sessions end")
    owners.start()
    rooms = make_rooms(6, ack_timeout_ms=1000)
    cut = []
    for n in range(4):
        enqueue_all(rooms, 2, start=2 * n)
        with db_connection.cursor() as cursor:
            cursor.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s",
                           ["carillon-rooms-owner"])
            cut += [ended for (ended,) in cursor.fetchall()]

    wait_for(lambda: all_done(rooms), "every message acked", ROOMS_TIMEOUT)

    assert cut and all(cut)
    seen = sandbox.chat_rooms()
    assert (seen["order_violations"], seen["delivery_order_violations"], seen["duplicates"]) == (0, 0, 0)
    for room in rooms:
        assert seen["rooms"][room.recipient]["arrivals"] == list(range(1, 9))
        assert statuses(room) == [Status.ACKED] * 8
    assert any("letting go" in process.log() for process in owners.processes)
