"""What operators watch: Carillon's /metrics, the alert rules, Flower behind its auth."""

import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from celery import Celery
from django.conf import settings
from django.test import Client, override_settings

from config.celery import app as critical_app
from core.processes import ROOT
from notifications.models import Event, FailedJob, OutboxMessage
from notifications.queues import dead_letter_queues, topology_declare
from tests.integration.conftest import celery_worker_start
from tests.processes import ManagedProcess, OwnRedis, free_port, python, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

ALERTS = ROOT / "platform" / "prometheus" / "alerts.yml"
TOKEN = "scrape-me"


def scrape(authorization: str = "") -> tuple[int, str]:
    with override_settings(CARILLON_METRICS_TOKEN=TOKEN):
        response = Client().get("/metrics", headers={"Authorization": authorization} if authorization else {})
    return response.status_code, response.content.decode()


def test_metrics_refuse_anonymous_and_wrong_tokens() -> None:
    assert scrape()[0] == 401
    assert scrape("Bearer not-it")[0] == 401


def test_metrics_report_what_the_test_created() -> None:
    with critical_app.connection_for_write() as connection:
        topology_declare(connection)
        # Earlier tests may have dead-lettered messages: start from empty queues, then
        # dead-letter one of our own.
        for queue in dead_letter_queues():
            queue(connection.default_channel).purge()
        connection.Producer().publish({"poison": True}, routing_key="carillon.sms.dlq", serializer="json")
    event = Event.objects.create(type="account.created", version=1, data={"user_id": 1}, occurred_at="2026-01-01T00:00:00Z")
    OutboxMessage.objects.create(event=event, kind="envelope", payload={})
    for _ in range(2):
        FailedJob.objects.create(task_name="t", queue="carillon.sms", error_class="E", error_message="m")

    expected = [
        'carillon_dead_letter_messages{queue="carillon.sms.dlq"} 1.0',
        'carillon_failed_jobs{critical="true",state="failed"} 2.0',
        "carillon_outbox_unpublished 1.0",
        "carillon_rabbitmq_up 1.0",
        'carillon_queue_messages_ready{queue="carillon.email"} 0.0',
        'carillon_dead_letter_messages{queue="carillon.email.dlq"} 0.0',
    ]

    def missing() -> list[str]:
        page = scrape(f"Bearer {TOKEN}")[1]
        return [line for line in expected if line not in page]

    # The management API refreshes queue depths every few seconds, each queue on its own.
    wait_for(lambda: not missing(), "every expected line in the scrape", 60)


def test_metrics_ask_the_next_management_node_when_the_first_is_down() -> None:
    with critical_app.connection_for_write() as connection:
        topology_declare(connection)
    # A cluster's nodes, the first of them dead: its port answers nothing.
    dead = f"http://guest:guest@127.0.0.1:{free_port()}/api/"
    with override_settings(RABBITMQ_MANAGEMENT_URL=f"{dead};{settings.RABBITMQ_MANAGEMENT_URL}"):
        page = scrape(f"Bearer {TOKEN}")[1]

    assert "carillon_rabbitmq_up 1.0" in page
    assert 'carillon_queue_consumers{queue="carillon.email"}' in page


def test_alert_rules_are_valid_and_use_only_metrics_carillon_exports() -> None:
    if shutil.which("promtool"):
        checked = subprocess.run(["promtool", "check", "rules", str(ALERTS)], capture_output=True, text=True)
        assert checked.returncode == 0, checked.stdout + checked.stderr
    exported = set(re.findall(r'GaugeMetricFamily\(\s*"(\w+)"', (ROOT / "notifications" / "metrics.py").read_text()))
    used = set(re.findall(r"\b(carillon_\w+)", ALERTS.read_text()))
    assert used and used <= exported, used - exported


@pytest.fixture
def flower() -> Iterator[str]:
    port = free_port()
    process = ManagedProcess(
        "flower",
        python("-m", "celery", "-A", "config.celery", "flower", "--conf=config/flower.py",
               "--address=127.0.0.1", f"--port={port}"),
        env={"FLOWER_BASIC_AUTH": "admin:s3cret"},
    )
    url = f"http://127.0.0.1:{port}"
    process.wait_until(lambda: _answers(f"{url}/healthcheck"), "flower /healthcheck")
    yield url
    process.stop()


def _answers(url: str) -> bool:
    try:
        return requests.get(url, timeout=5).status_code == 200
    except requests.RequestException:
        return False


def test_flower_metrics_need_its_basic_auth(flower: str) -> None:
    assert requests.get(f"{flower}/metrics", timeout=10).status_code == 401
    assert requests.get(f"{flower}/metrics", auth=("admin", "wrong"), timeout=10).status_code == 401
    assert requests.get(f"{flower}/metrics", auth=("admin", "s3cret"), timeout=10).status_code == 200
    assert requests.get(f"{flower}/", timeout=10).status_code == 401


def test_the_background_flower_shows_tasks_and_workers_again_after_redis_restarts(tmp_path: Path) -> None:
    # A Redis of its own (the background app's broker), so stopping it leaves the suite's alone.
    own = OwnRedis(tmp_path)
    own.start()
    env = {"REDIS_URL": own.url, "FLOWER_BASIC_AUTH": "admin:s3cret"}
    port = free_port()
    worker = celery_worker_start("config.background", "flower-redis", "background", env, wait=False)
    flower = ManagedProcess("flower-background", python(
        "-m", "celery", "-A", "config.background", "flower", "--conf=config/flower.py", "--address=127.0.0.1",
        f"--port={port}"), env=env)
    url, auth = f"http://127.0.0.1:{port}", ("admin", "s3cret")
    broker = Celery(broker=own.url)

    def seen(task_id: str) -> bool:
        tasks = requests.get(f"{url}/api/tasks", auth=auth, timeout=10).json()
        return tasks.get(task_id, {}).get("state") == "SUCCESS"

    def worker_listed() -> bool:
        workers = requests.get(f"{url}/api/workers", params={"refresh": 1}, auth=auth, timeout=10).json()
        return worker.hostname in workers and "stats" in workers[worker.hostname]

    def a_ping_seen(what: str) -> None:
        # Task events go out on Redis pub/sub: those of a task that ran before Flower's event
        # receiver subscribed are gone (docs/operations.md), and the receiver subscribes just
        # after Flower logs its connection, whether at start or after an outage. So a ping
        # goes out every two seconds until Flower shows one.
        sent: list[tuple[float, str]] = []

        def one_seen() -> bool:
            if not sent or time.monotonic() - sent[-1][0] > 2:
                sent.append((time.monotonic(), broker.send_task("background.ping", queue="background").id))
            return any(seen(task_id) for _, task_id in sent)

        wait_for(one_seen, what, timeout=60)

    try:
        worker.wait_ready()
        flower.wait_until(lambda: _answers(f"{url}/healthcheck"), "flower /healthcheck")
        a_ping_seen("a task before the outage in Flower")

        own.stop()
        wait_for(lambda: "trying again" in flower.log(), "Flower noticing the broker gone")
        own.start()
        worker.wait_for_log("Connected to redis", timeout=30)
        wait_for(lambda: flower.log().count("Connected to redis") >= 2, "Flower's event receiver back", timeout=30)
        a_ping_seen("a task after the outage in Flower")
        wait_for(worker_listed, "the worker in Flower's list after the outage", timeout=30)
    finally:
        broker.close()
        flower.stop()
        worker.kill()
        own.stop()
