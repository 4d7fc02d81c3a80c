"""Django's SQLite backend, with writers that wait for the write lock by priority.

SQLite has one write lock per database. Its own busy handler sleeps longer the longer a
connection has waited for it (up to 100 ms between tries), so on a database that bulk
writers keep busy, a transactional writer that began waiting early keeps losing the lock
to writers that come after it: a password reset behind a broadcast waited seconds. Here
a connection tries again every millisecond instead, for as long as its `timeout` (a
few percent of a core while it waits); a process doing bulk work calls
`write_lock_yield()` at start and keeps SQLite's own back-off, so that whenever the lock
comes free, the transactional writers waiting for it are first to try.

Only a statement that did not start (BEGIN, or one outside a transaction) is tried
again: inside a transaction, which holds the lock from its BEGIN IMMEDIATE, a "locked"
error is raised as SQLite gave it.
"""

import sqlite3
import time
from collections.abc import Callable
from typing import Any

from django.db.backends.sqlite3 import base

# How often a connection of this process tries for the write lock again; None: SQLite's
# own busy handler, which backs off.
_poll_seconds: float | None = 0.001


def write_lock_yield() -> None:
    """Let this process's writers wait behind every other process's (bulk work): connections
    opened from now on wait with SQLite's own back-off."""
    global _poll_seconds
    _poll_seconds = None


class DatabaseWrapper(base.DatabaseWrapper):  # type: ignore[misc]  # django-stubs has no backends
    lock_poll_seconds: float | None = None
    lock_wait_seconds: float = 5.0

    def get_new_connection(self, conn_params: dict[str, Any]) -> sqlite3.Connection:
        connection: sqlite3.Connection = super().get_new_connection(conn_params)
        self.lock_poll_seconds = _poll_seconds
        self.lock_wait_seconds = float(conn_params.get("timeout", 5.0))
        if self.lock_poll_seconds is not None:
            connection.execute("PRAGMA busy_timeout = 0")
        return connection

    def create_cursor(self, name: str | None = None) -> "Cursor":
        cursor: Cursor = self.connection.cursor(factory=Cursor)
        cursor.poll_seconds, cursor.lock_wait_seconds = self.lock_poll_seconds, self.lock_wait_seconds
        return cursor


class Cursor(base.SQLiteCursorWrapper):  # type: ignore[misc]
    poll_seconds: float | None = None
    lock_wait_seconds: float = 5.0

    def execute(self, query: str, params: Any = None) -> Any:
        return self._waiting(super().execute, query, params)

    def executemany(self, query: str, param_list: Any) -> Any:
        return self._waiting(super().executemany, query, list(param_list))

    def _waiting(self, statement: Callable[..., Any], *args: Any) -> Any:
        deadline = None
        while True:
            try:
                return statement(*args)
            except sqlite3.OperationalError as exc:
                if self.poll_seconds is None or self.connection.in_transaction or "database is locked" not in str(exc):
                    raise
                now = time.monotonic()
                deadline = deadline or now + self.lock_wait_seconds
                if now >= deadline:
                    raise
                time.sleep(self.poll_seconds)
