"""On a three-node RabbitMQ cluster, a node SIGKILLed and restarted while events are
published costs nothing a user would notice: every email and analytics event reaches the
provider, none twice.

platform/test starts the cluster (its full run, or with CARILLON_TEST_CLUSTER=1) and
names it in CARILLON_TEST_CLUSTER_*; without it these tests are skipped.
"""

import os
import subprocess
import threading
from collections.abc import Callable, Iterator

import pytest

from notifications.models import Delivery, OutboxMessage
from sandbox.client import SandboxClient
from tests.integration.conftest import relay_start
from tests.integration.test_pipeline import make_user
from tests.processes import ROOT, ManagedProcess, python, subprocess_database_url, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.cluster, pytest.mark.django_db(transaction=True)]

CLUSTER_NAME = os.environ.get("CARILLON_TEST_CLUSTER_NAME", "")
EVENTS = 60
RATE_PER_SECOND = 4

# Publishes EVENTS account.created events for the given users at a fixed rate, each in
# its own transaction (the fast path after commit, the relay for what it misses).
PUBLISHER = """
import os, time
from django.db import transaction
from notifications.services.events import event_publish
users = [int(user) for user in os.environ["PUBLISH_USERS"].split(",")]
rate = float(os.environ["PUBLISH_RATE"])
start = time.monotonic()
for n, user in enumerate(users):
    time.sleep(max(0.0, start + n / rate - time.monotonic()))
    with transaction.atomic():
        event_publish(type="account.created", data={"user_id": user}, idempotency_key=f"cluster-{user}")
    print("published", n + 1, flush=True)
"""


class Node:
    """Node `index` of the suite's cluster, named and numbered as platform/test started it."""

    def __init__(self, index: int) -> None:
        offset = (index - 1) * int(os.environ["CARILLON_TEST_CLUSTER_PORT_STEP"])
        self.name = f"{CLUSTER_NAME}-{index}@localhost"
        self.amqp_port = int(os.environ["CARILLON_TEST_CLUSTER_AMQP_PORT"]) + offset
        self.management_port = int(os.environ["CARILLON_TEST_CLUSTER_MANAGEMENT_PORT"]) + offset

    def _lib(self, script: str) -> None:
        subprocess.run(  # noqa: S603 - our own script and ports
            ["bash", "-c", f"set -euo pipefail; source platform/lib.sh; {script}"],
            cwd=ROOT, check=True, capture_output=True, timeout=300,
            env={**os.environ, "RABBITMQ_EXTRA_CONF": str(ROOT / "platform/rabbitmq/cluster.conf")},
        )

    def sigkill(self) -> None:
        """Kill the node's Erlang VM outright, as a crash or the OOM killer would."""
        listening = subprocess.run(  # noqa: S603
            ["ss", "-Hltnp", f"sport = :{self.amqp_port}"], capture_output=True, text=True, check=True
        ).stdout
        pid = listening.split("pid=", 1)[1].split(",", 1)[0]
        os.kill(int(pid), 9)

    def start(self) -> None:
        """Start it again on its data: it rejoins the cluster by itself."""
        self._lib(
            f"start_rabbitmq {self.name} {self.amqp_port} {self.amqp_port + 20000} {self.management_port} nowait; "
            f"await_rabbitmq {self.name} {self.management_port}"
        )


@pytest.fixture
def cluster_env(pipeline_env: dict[str, str]) -> dict[str, str]:
    url = os.environ.get("CARILLON_TEST_CLUSTER_RABBITMQ_URL")
    if not url:
        pytest.skip("no RabbitMQ cluster: platform/test starts one in its full run, or with CARILLON_TEST_CLUSTER=1")
    return {**pipeline_env, "RABBITMQ_URL": url}


@pytest.fixture
def cluster_relay(cluster_env: dict[str, str]) -> Iterator[ManagedProcess]:
    process = relay_start("cluster-relay", cluster_env)
    yield process
    process.stop()


def test_a_node_killed_and_restarted_while_events_are_published_loses_and_duplicates_nothing(
    cluster_env: dict[str, str],
    cluster_relay: ManagedProcess,
    start_pipeline_worker: Callable[..., ManagedProcess],
    sandbox: SandboxClient,
) -> None:
    users = [make_user(f"cluster{n}", f"+1555200{n:04d}") for n in range(EVENTS)]
    start_pipeline_worker("cluster-worker", RABBITMQ_URL=cluster_env["RABBITMQ_URL"])
    # The first node: every client connects to it first, and it leads the queues it declared.
    node = Node(1)
    publisher = ManagedProcess(
        "cluster-publisher", python("manage.py", "shell", "-v", "0", "-c", PUBLISHER),
        env={**cluster_env, "DATABASE_URL": subprocess_database_url(),
             "PUBLISH_USERS": ",".join(str(user.pk) for user in users), "PUBLISH_RATE": str(RATE_PER_SECOND)},
    )
    publisher.wait_for_log("published 10", timeout=120)

    node.sigkill()
    back: list[bool] = []

    def restart() -> None:
        node.start()
        back.append(True)

    restarted = threading.Thread(target=restart)
    restarted.start()  # takes tens of seconds: events keep going meanwhile

    assert publisher.process.wait(timeout=180) == 0, publisher.log()
    assert f"published {EVENTS}\n" in publisher.log()
    publisher.stop()
    restarted.join(timeout=300)
    assert back, "the killed node did not start again"

    def settled() -> bool:
        done = Delivery.objects.filter(subscriber__in=["transactional_email", "product_analytics"], status="sent")
        return done.count() == 2 * EVENTS

    wait_for(settled, "every email and analytics delivery sent", 240)
    assert not OutboxMessage.objects.filter(published_at__isnull=True).exists()
    email, mixpanel = sandbox.inbox("email"), sandbox.inbox("mixpanel")
    assert sorted(mail["rcpt_to"][0] for mail in email["received"]) == sorted(user.email for user in users)
    assert len(mixpanel["received"]) == EVENTS
    assert (email["duplicates"], mixpanel["duplicates"]) == (0, 0)
