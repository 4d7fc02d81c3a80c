"""The cluster layout under fixed-rate load while its parts die, one after another: a
RabbitMQ node SIGKILLed and restarted, the Redis primary SIGKILLed (Sentinel promotes the
replica), a daphne frontend SIGKILLed behind HAProxy, with WebSocket and SSE clients
connected through the proxy the whole time. Counted afterwards: every email, SMS and
analytics event reached the provider once, every in-app notification exists once, and
every live client saw its topic without a gap, told `resync` where ids moved on.

The run writes the publish → provider latency of every delivery, the failures' moments
and how long each recovery took to the test log directory (`cluster-soak.json`, and
`cluster-soak.png` plotted with the failures marked): docs/benchmarks.md reports them.

platform/test starts the three-node RabbitMQ cluster (its full run, or with
CARILLON_TEST_CLUSTER=1) and names it in CARILLON_TEST_CLUSTER_*; without it this test
is skipped. The Redis primary, its replica, three Sentinels, two daphnes and HAProxy are
the test's own.
"""

import asyncio
import json
import os
import re
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from benchmarks.plot import timeline_plot
from notifications.models import Delivery, Notification, OutboxMessage
from realtime.auth import realtime_token_create
from realtime.topics import user_topic
from sandbox.client import SandboxClient
from tests.integration.conftest import daphne_wait, relay_start, start_daphne
from tests.integration.realtime.clients import EventSource
from tests.integration.test_pipeline import make_user
from tests.processes import (
    LOG_DIR,
    ROOT,
    ManagedProcess,
    free_port,
    processes_stop,
    python,
    subprocess_database_url,
    wait_for,
)

pytestmark = [pytest.mark.integration, pytest.mark.cluster, pytest.mark.django_db(transaction=True)]

CLUSTER_NAME = os.environ.get("CARILLON_TEST_CLUSTER_NAME", "")
USERS = 4  # two followed live over WebSocket, two over SSE
EVENTS = 200
RATE_PER_SECOND = 4.0
SENTINEL_MASTER = "carillon-soak"
# The failures, each once the publisher has published this many events.
NODE_KILLED_AT, REDIS_KILLED_AT, FRONTEND_KILLED_AT = 30, 80, 130

# Publishes EVENTS events at a fixed rate, each in its own transaction (the fast path after
# commit, the relay for what it misses): account.created (an email, a Mixpanel event, an
# in-app notification) and password.reset_requested (an email and an SMS) in turn, each
# to the next user, the reset link naming the event.
PUBLISHER = """
import os, time
from django.db import transaction
from notifications.services.events import event_publish
users = [int(user) for user in os.environ["PUBLISH_USERS"].split(",")]
events, rate = int(os.environ["PUBLISH_EVENTS"]), float(os.environ["PUBLISH_RATE"])
start = time.monotonic()
for n in range(events):
    time.sleep(max(0.0, start + n / rate - time.monotonic()))
    user = users[(n // 2) % len(users)]
    with transaction.atomic():
        if n % 2 == 0:
            event_publish(type="account.created", data={"user_id": user}, idempotency_key=f"soak-{n}")
        else:
            event_publish(type="password.reset_requested", idempotency_key=f"soak-{n}",
                          data={"user_id": user, "reset_url": f"https://carillon.example.com/reset/{n}"})
    print("published", n + 1, flush=True)
"""
# Deliveries of the run: an email per event; Mixpanel, in-app and SMS for half each.
DELIVERIES = EVENTS + 3 * EVENTS // 2


def lib(script: str) -> None:
    """Run platform/lib.sh functions, as platform/test does."""
    subprocess.run(  # noqa: S603 - our own script and ports
        ["bash", "-c", f"set -euo pipefail; source platform/lib.sh; {script}"],
        cwd=ROOT, check=True, capture_output=True, timeout=300,
        env={**os.environ, "RABBITMQ_EXTRA_CONF": str(ROOT / "platform/rabbitmq/cluster.conf")},
    )


def sigkill_listener(port: int) -> None:
    """Kill the process listening on `port` outright, as a crash or the OOM killer would."""
    listening = subprocess.run(  # noqa: S603
        ["ss", "-Hltnp", f"sport = :{port}"], capture_output=True, text=True, check=True
    ).stdout
    pid = listening.split("pid=", 1)[1].split(",", 1)[0]
    os.kill(int(pid), 9)


class Node:
    """Node `index` of the suite's cluster, named and numbered as platform/test started it."""

    def __init__(self, index: int) -> None:
        offset = (index - 1) * int(os.environ["CARILLON_TEST_CLUSTER_PORT_STEP"])
        self.name = f"{CLUSTER_NAME}-{index}@localhost"
        self.amqp_port = int(os.environ["CARILLON_TEST_CLUSTER_AMQP_PORT"]) + offset
        self.management_port = int(os.environ["CARILLON_TEST_CLUSTER_MANAGEMENT_PORT"]) + offset

    def start(self) -> None:
        """Start it again on its data: it rejoins the cluster by itself."""
        lib(
            f"start_rabbitmq {self.name} {self.amqp_port} {self.amqp_port + 20000} {self.management_port} nowait; "
            f"await_rabbitmq {self.name} {self.management_port}"
        )


@dataclass
class RedisFailover:
    """A Redis primary, its replica and three Sentinels watching them (platform/lib.sh)."""

    primary: int = field(default_factory=free_port)
    replica: int = field(default_factory=free_port)
    sentinels: list[int] = field(default_factory=lambda: [free_port() for _ in range(3)])

    @property
    def ports(self) -> str:
        return " ".join(map(str, [self.primary, self.replica, *self.sentinels]))

    def env(self) -> dict[str, str]:
        return {"REDIS_SENTINELS": ",".join(f"127.0.0.1:{port}" for port in self.sentinels),
                "REDIS_SENTINEL_MASTER": SENTINEL_MASTER}

    def primary_port(self) -> int:
        answer = subprocess.run(  # noqa: S603
            ["redis-cli", "-p", str(self.sentinels[0]), "sentinel", "get-master-addr-by-name", SENTINEL_MASTER],
            capture_output=True, text=True, check=True,
        ).stdout.split()
        return int(answer[1])


@pytest.fixture
def redis_failover() -> Iterator[RedisFailover]:
    redis = RedisFailover()
    lib(f"start_redis_failover soak-{redis.primary} {SENTINEL_MASTER} {redis.ports}")
    yield redis
    lib(f"stop_redis_failover {redis.ports}")


def cluster_await() -> None:
    """platform/test boots the cluster while the tests before this one run: wait for it."""
    ready = Path(os.environ["CARILLON_TEST_CLUSTER_READY"])
    wait_for(ready.exists, "the RabbitMQ cluster started by platform/test", timeout=300)
    if ready.read_text().strip() != "ready":
        log = Path(os.environ["CARILLON_TEST_CLUSTER_START_LOG"])
        pytest.fail(f"platform/test could not start the RabbitMQ cluster:\n{log.read_text()[-3000:]}", pytrace=False)


@pytest.fixture
def cluster_env(pipeline_env: dict[str, str], redis_failover: RedisFailover) -> dict[str, str]:
    url = os.environ.get("CARILLON_TEST_CLUSTER_RABBITMQ_URL")
    if not url:
        pytest.skip("no RabbitMQ cluster: platform/test starts one in its full run, or with CARILLON_TEST_CLUSTER=1")
    cluster_await()
    return {**pipeline_env, "RABBITMQ_URL": url, **redis_failover.env(), "CARILLON_TRUSTED_PROXIES": "1"}


@pytest.fixture
def frontends(cluster_env: dict[str, str]) -> Iterator[tuple[list[ManagedProcess], str]]:
    """Two daphnes behind HAProxy (platform/haproxy/haproxy.cfg); answers them and the proxy's URL."""
    ports = [free_port(), free_port()]
    daphnes = [start_daphne(f"soak-web-{n + 1}", cluster_env, port, wait=False) for n, port in enumerate(ports)]
    for process, url in daphnes:
        daphne_wait(process, url)
    proxy_port = free_port()
    proxy = ManagedProcess(
        "soak-haproxy", ["haproxy", "-db", "-f", str(ROOT / "platform/haproxy/haproxy.cfg")],
        env={"CARILLON_PROXY_PORT": str(proxy_port), "CARILLON_WEB_PORT": str(ports[0]),
             "CARILLON_WEB_2_PORT": str(ports[1])},
    )
    proxy_url = f"http://127.0.0.1:{proxy_port}"
    daphne_wait(proxy, proxy_url)
    yield [process for process, _ in daphnes], proxy_url
    processes_stop([proxy, *(process for process, _ in daphnes)])


@dataclass
class Follower:
    """What one live client saw of its user's topic, in order."""

    topic: str
    transport: str  # "websocket" or "sse"
    ids: list[int] = field(default_factory=list)  # message ids, as received
    notifications: list[int] = field(default_factory=list)
    resyncs: list[int] = field(default_factory=list)
    anomalies: list[str] = field(default_factory=list)  # a gap or a repeat, not after a resync
    drops: list[float] = field(default_factory=list)
    reconnected: list[float] = field(default_factory=list)
    position: int | None = None

    def take(self, kind: str, topic_id: int, data: Any) -> None:
        if kind == "resync":
            self.resyncs.append(topic_id)
        elif kind == "message":
            if self.position is not None and topic_id != self.position + 1:
                self.anomalies.append(f"id {topic_id} after {self.position}")
            self.ids.append(topic_id)
            self.notifications.append(data["notification"]["id"])
        self.position = topic_id

    def dropped(self) -> None:
        self.drops.append(time.time())


async def follow_websocket(base_url: str, token: str, follower: Follower, stop: threading.Event) -> None:
    """Stay subscribed through every drop, resuming from the last position (docs/realtime.md)."""
    ws_url = base_url.replace("http", "ws", 1) + f"/ws/?token={token}"
    while not stop.is_set():
        try:
            async with aiohttp.ClientSession() as session, session.ws_connect(ws_url, origin=base_url) as ws:
                subscribe: dict[str, Any] = {"type": "subscribe", "topic": follower.topic}
                if follower.position is not None:
                    subscribe["last_id"] = follower.position
                await ws.send_str(json.dumps(subscribe))
                if follower.drops:
                    follower.reconnected.append(time.time())
                while not stop.is_set():
                    try:
                        message = await ws.receive(timeout=1.0)
                    except TimeoutError:
                        continue
                    if message.type != aiohttp.WSMsgType.TEXT:
                        break
                    frame = json.loads(message.data)
                    if frame["type"] in ("message", "subscribed", "resync"):
                        follower.take(frame["type"], frame["id"], frame.get("data"))
        except (aiohttp.ClientError, OSError):
            pass
        if not stop.is_set():
            follower.dropped()
            await asyncio.sleep(0.5)


async def follow_event_stream(base_url: str, token: str, follower: Follower, stop: threading.Event) -> None:
    """The same over SSE, read as EventSource reads it: it resumes with Last-Event-ID."""
    async with aiohttp.ClientSession() as session:
        source = EventSource(session, f"{base_url}/events/?topic={follower.topic}&token={token}")
        while not stop.is_set():
            try:
                await source.connect()
                if follower.drops:
                    follower.reconnected.append(time.time())
                while not stop.is_set():
                    # Nothing for 15 s (a heartbeat is due every 25 s) counts as a drop.
                    event = await source.dispatch()
                    if event is None:
                        continue
                    body = json.loads(event["data"])
                    if event["event"] == "error":
                        follower.anomalies.append(f"error {body}")
                        continue
                    kind = event["event"] if event["event"] in ("subscribed", "resync") else "message"
                    follower.take(kind, body["id"], body.get("data"))
            except (aiohttp.ClientError, OSError, ConnectionError, TimeoutError, AssertionError):
                pass
            if not stop.is_set():
                follower.dropped()
                source.response = None
                await asyncio.sleep(0.5)


def followers_run(proxy_url: str, users: list[Any], stop: threading.Event) -> tuple[list[Follower], threading.Thread]:
    """A live client per user through the proxy, WebSocket and SSE in turn, in a thread."""
    followers = [Follower(user_topic(user.pk), "websocket" if n % 2 == 0 else "sse") for n, user in enumerate(users)]
    follow = {"websocket": follow_websocket, "sse": follow_event_stream}

    async def run() -> None:
        await asyncio.gather(*[
            follow[follower.transport](proxy_url, realtime_token_create(user_id=user.pk), follower, stop)
            for user, follower in zip(users, followers, strict=True)
        ])

    thread = threading.Thread(target=asyncio.run, args=(run(),), daemon=True)
    thread.start()
    return followers, thread


def soak_report(marks: list[tuple[float, str]], recoveries: dict[str, float], followers: list[Follower]) -> dict[str, Any]:
    """Every delivery's publish → provider latency, by channel, written with the plot."""
    rows = [(channel, created.timestamp(), sent_at.timestamp()) for channel, created, sent_at in Delivery.objects.filter(
        status__in=["sent", "delivered"]).values_list("channel", "event__created_at", "sent_at") if sent_at]
    start = min(created for _, created, _ in rows)
    points: dict[str, list[tuple[float, float]]] = {}
    for channel, created, sent_at in rows:
        points.setdefault(channel, []).append((created - start, (sent_at - created) * 1000))
    report = {
        "events": EVENTS, "rate_per_second": RATE_PER_SECOND,
        "failures": [{"at_seconds": round(at - start, 1), "what": what} for at, what in marks],
        "recovery_seconds": {what: round(seconds, 1) for what, seconds in recoveries.items()},
        "latency_ms": {channel: _windows(series, [at - start for at, _ in marks]) for channel, series in points.items()},
        "live_clients": [{"topic": f.topic, "transport": f.transport, "messages": len(f.ids),
                          "drops": len(f.drops), "resyncs": len(f.resyncs)} for f in followers],
    }
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    (LOG_DIR / "cluster-soak.json").write_text(json.dumps(report, indent=2))
    timeline_plot(dict(sorted(points.items())), marks=[(at - start, what) for at, what in marks],
                  title=f"cluster soak: {EVENTS} events at {RATE_PER_SECOND:g}/s", path=LOG_DIR / "cluster-soak.png")
    return report


def _windows(series: list[tuple[float, float]], failures: list[float]) -> dict[str, dict[str, float]]:
    """p50/p99/max before the first failure and from each failure to the next."""
    edges = [float("-inf"), *failures, float("inf")]
    names = ["before", *[f"after failure {n + 1}" for n in range(len(failures))]]
    windows = {}
    for name, low, high in zip(names, edges, edges[1:], strict=False):
        latencies = sorted(latency for at, latency in series if low <= at < high)
        if latencies:
            windows[name] = {"n": len(latencies), "p50": round(latencies[len(latencies) // 2], 1),
                             "p99": round(latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))], 1),
                             "max": round(latencies[-1], 1)}
    return windows


# Under a minute of publishing, but a RabbitMQ node takes 30 to 60 s to boot again on a
# 2-core machine, beside the rest of the suite.
@pytest.mark.timeout(600)
def test_a_node_a_redis_primary_and_a_frontend_killed_under_load_lose_and_duplicate_nothing(
    cluster_env: dict[str, str],
    redis_failover: RedisFailover,
    frontends: tuple[list[ManagedProcess], str],
    start_pipeline_worker: Callable[..., ManagedProcess],
    sandbox: SandboxClient,
) -> None:
    daphnes, proxy_url = frontends
    users = [make_user(f"soak{n}", f"+1555200{n:04d}") for n in range(USERS)]
    worker = start_pipeline_worker("soak-worker", **{k: v for k, v in cluster_env.items() if k != "DATABASE_URL"})
    relay = relay_start("soak-relay", cluster_env)
    stop = threading.Event()
    followers, following = followers_run(proxy_url, users, stop)
    wait_for(lambda: all(f.position is not None for f in followers), "every client subscribed through the proxy")
    publisher = ManagedProcess(
        "soak-publisher", python("manage.py", "shell", "-v", "0", "-c", PUBLISHER),
        env={**cluster_env, "DATABASE_URL": subprocess_database_url(),
             "PUBLISH_USERS": ",".join(str(user.pk) for user in users), "PUBLISH_EVENTS": str(EVENTS),
             "PUBLISH_RATE": str(RATE_PER_SECOND)},
    )
    marks: list[tuple[float, str]] = []
    recoveries: dict[str, float] = {}

    # 1. The RabbitMQ node every client connects to first (and that leads the queues it
    # declared), SIGKILLed; started again on its data while events keep coming.
    publisher.wait_for_log(f"published {NODE_KILLED_AT}\n", timeout=120)
    node = Node(1)
    sigkill_listener(node.amqp_port)
    marks.append((time.time(), "RabbitMQ node SIGKILLed"))

    def restart() -> None:
        started = time.monotonic()
        node.start()
        recoveries["RabbitMQ node back in the cluster"] = time.monotonic() - started

    restarting = threading.Thread(target=restart)
    restarting.start()

    # 2. The Redis primary SIGKILLed: the Sentinels promote the replica.
    publisher.wait_for_log(f"published {REDIS_KILLED_AT}\n", timeout=120)
    old_primary = redis_failover.primary_port()
    sigkill_listener(old_primary)
    killed = time.monotonic()
    marks.append((time.time(), "Redis primary SIGKILLed"))
    wait_for(lambda: redis_failover.primary_port() != old_primary, "Sentinel promoted the replica", 60)
    recoveries["Redis replica promoted"] = time.monotonic() - killed

    # 3. A frontend SIGKILLed: its clients reconnect through HAProxy to the other one.
    publisher.wait_for_log(f"published {FRONTEND_KILLED_AT}\n", timeout=120)
    drops_before = sum(len(f.drops) for f in followers)
    os.kill(daphnes[0].process.pid, 9)
    killed = time.monotonic()
    marks.append((time.time(), "daphne frontend SIGKILLed"))
    wait_for(lambda: all(len(f.reconnected) == len(f.drops) for f in followers)
             and sum(len(f.drops) for f in followers) > drops_before, "its clients reconnected through the proxy", 60)
    recoveries["the frontend's clients reconnected"] = time.monotonic() - killed

    assert publisher.process.wait(timeout=180) == 0, publisher.log()
    assert f"published {EVENTS}\n" in publisher.log()
    restarting.join(timeout=300)
    assert "RabbitMQ node back in the cluster" in recoveries, "the killed node did not start again"

    def settled() -> bool:
        return Delivery.objects.filter(status__in=["sent", "delivered"]).count() == DELIVERIES

    wait_for(settled, "every delivery sent", 240)
    # The last in-app pushes reach the clients, then they stop.
    last_id = {user_topic(user.pk): Notification.objects.filter(user=user).latest("id").pk for user in users}
    wait_for(lambda: all(f.notifications and max(f.notifications) == last_id[f.topic] for f in followers),
             "the live clients got the last notifications", 30)
    stop.set()
    following.join(timeout=10)
    relay.stop()
    report = soak_report(marks, recoveries, followers)

    # Nothing lost, nothing twice, at the providers and in the inbox.
    assert not OutboxMessage.objects.filter(published_at__isnull=True).exists()
    email, mixpanel, sms = sandbox.inbox("email"), sandbox.inbox("mixpanel"), sandbox.inbox("sms")
    assert len(email["received"]) == EVENTS, report
    assert len(mixpanel["received"]) == EVENTS // 2, report
    assert (email["duplicates"], mixpanel["duplicates"]) == (0, 0)
    # Twilio takes no idempotency key: a text twice would be two messages. Each names its event.
    links = sorted(re.findall(r"/reset/(\d+)", " ".join(message["body"] for message in sms["received"])))
    assert links == sorted(str(n) for n in range(1, EVENTS, 2)), report
    assert Notification.objects.count() == EVENTS // 2
    # Every live client saw its topic without a gap or a repeat, and was told `resync`
    # once: at the Redis failover, which moves every topic's ids on (docs/realtime.md),
    # since the promoted replica may lack the last ones. What it did not get live, it
    # reloads from the inbox API, as `resync` says.
    for follower in followers:
        expected = set(Notification.objects.filter(user_id=int(follower.topic.split(":")[1])).values_list("id", flat=True))
        assert not follower.anomalies, (follower.topic, follower.anomalies)
        assert len(follower.resyncs) == 1, (follower.topic, follower.resyncs)
        assert set(follower.notifications) <= expected, follower.topic
        assert len(follower.notifications) == len(set(follower.notifications)), follower.topic
    assert any(follower.drops for follower in followers), "no client was on the killed frontend"
    # The worker set its delayed delivery (retries on quorum queues) up again through the
    # node it failed over to, not by waiting on the dead one first.
    assert "Retrying delayed delivery setup" not in worker.log()
