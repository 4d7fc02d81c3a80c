"""SQLite's one write lock, shared by every process: a transactional writer gets it in
the gaps a bulk writer leaves, instead of waiting behind it with SQLite's own back-off
(which by then tries every 100 ms). A real SQLite file, two connections."""

import sqlite3
import threading
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from django.db.utils import ConnectionHandler

from config.celery import app as critical_app
from config.env import database_config
from core.db.sqlite3 import base as sqlite_backend
from notifications import queues

HOG_TRANSACTIONS = 100


def bulk_writer(path: Path, started: threading.Event) -> None:
    """Keep the write lock, as a broadcast's bulk writers do: a transaction of 40 ms, then
    the next after a gap of a fraction of a millisecond."""
    connection = sqlite3.connect(path, isolation_level=None, timeout=20)
    pause = threading.Event()
    for _ in range(HOG_TRANSACTIONS):
        connection.execute("BEGIN IMMEDIATE")
        connection.execute("INSERT INTO writes (who) VALUES ('bulk')")
        started.set()
        pause.wait(0.040)
        connection.execute("COMMIT")
        pause.wait(0.00015)
    connection.close()


def test_a_transactional_write_gets_the_lock_while_a_bulk_writer_keeps_it_busy(
    tmp_path: Path, django_db_blocker: Any
) -> None:
    path = tmp_path / "lock.sqlite3"
    with sqlite3.connect(path) as setup:
        setup.execute("PRAGMA journal_mode=WAL")
        setup.execute("CREATE TABLE writes (id INTEGER PRIMARY KEY, who TEXT)")
    connections = ConnectionHandler({"default": database_config(f"sqlite:///{path}")})
    started = threading.Event()
    bulk = threading.Thread(target=bulk_writer, args=(path, started))
    bulk.start()
    try:
        started.wait(5)
        with django_db_blocker.unblock(), connections["default"].cursor() as cursor:  # a database of its own
            cursor.execute("INSERT INTO writes (who) VALUES ('reset')")
    finally:
        bulk.join()
        connections.close_all()

    with sqlite3.connect(path) as check:
        [(reset_id,)] = check.execute("SELECT id FROM writes WHERE who = 'reset'").fetchall()
        [(bulk_after,)] = check.execute("SELECT count(*) FROM writes WHERE who = 'bulk' AND id > ?", (reset_id,)).fetchall()
    # It went in while the bulk writer still had most of its transactions to write, not
    # after it stopped.
    assert bulk_after > HOG_TRANSACTIONS // 2, (reset_id, bulk_after)


def test_a_bulk_lane_process_waits_with_sqlites_own_back_off(
    tmp_path: Path, django_db_blocker: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A connection tries every millisecond itself (SQLite's busy handler off), unless
    # its process yields the lock: then SQLite waits, for the connection's timeout.
    monkeypatch.setattr(sqlite_backend, "_poll_seconds", sqlite_backend._poll_seconds)  # put back afterwards
    fast = ConnectionHandler({"default": database_config(f"sqlite:///{tmp_path / 'a.sqlite3'}")})
    bulk = ConnectionHandler({"default": database_config(f"sqlite:///{tmp_path / 'b.sqlite3'}")})
    with django_db_blocker.unblock():
        try:
            with fast["default"].cursor() as cursor:
                assert cursor.execute("PRAGMA busy_timeout").fetchone() == (0,)
            sqlite_backend.write_lock_yield()
            with bulk["default"].cursor() as cursor:
                assert cursor.execute("PRAGMA busy_timeout").fetchone() == (20_000,)
        finally:
            fast.close_all()
            bulk.close_all()


@pytest.mark.parametrize(("consumed", "yields"), [
    (["carillon.inapp.bulk"], True),
    (["carillon.email.bulk", "carillon.sms.bulk", "carillon.default"], True),
    (["carillon.email", "carillon.email.bulk"], False),  # both lanes: it waits as a transactional one
    (["carillon.default", "carillon.email", "carillon.sms"], False),
])
def test_a_worker_of_the_bulk_lane_yields_the_lock_when_it_starts(
    consumed: list[str], yields: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    # What `celery worker -Q` selected, as the worker_init receiver reads it.
    monkeypatch.setattr(sqlite_backend, "_poll_seconds", 0.001)
    monkeypatch.setattr(critical_app.amqp.queues, "_consume_from", {name: critical_app.amqp.queues[name] for name in consumed})

    queues._bulk_workers_yield_the_write_lock(SimpleNamespace(app=critical_app))

    assert (sqlite_backend._poll_seconds is None) == yields
