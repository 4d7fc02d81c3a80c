"""django-celery-beat's DatabaseScheduler, sending only while it holds a lock in Redis.

Several beats each send every schedule (celery beat keeps its heap in memory), and
django-celery-beat has no lock of its own; celery-redbeat has one but replaces the
database scheduler (schedules in Redis, not editable in the admin). So this subclass
takes a lease in Redis with redis-py's Lock (a random token, released and extended by Lua
scripts that check it): the holder renews it at every tick, a second beat finds it taken
and waits, and takes over when the holder stops renewing (it died, or hung longer than
CARILLON_BEAT_LOCK_TIMEOUT_SECONDS). Each tick checks the lease when it starts and again
just before it sends (between the two it reads the schedule from the database, long
enough for a pause to lose the lease), so a beat that lost its lease sends nothing more;
what is left is a pause inside the send itself, one Redis round trip wide.

On taking over, the schedule is read again from the database, with the last run times
the previous holder saved after each send (beat_sync_every = 1): a run the old holder
sent is not sent again. A run it sent but died before saving may be sent twice; every
background job is idempotent for that reason.
"""

import logging
from typing import Any

from django.conf import settings
from django_celery_beat.schedulers import DatabaseScheduler, ModelEntry
from redis.exceptions import LockError, RedisError
from redis.lock import Lock

from core.redis import redis_client

logger = logging.getLogger(__name__)


class RunWritingEntry(ModelEntry):  # type: ignore[misc]
    """A schedule entry that writes back only its run fields.

    django-celery-beat's entry reads the task's row and saves the whole of it again: an
    edit made in the admin between that read and that save (arguments, schedule, enabled)
    was overwritten with the old values, silently. One UPDATE of the run fields alone
    leaves every other column as the admin left it.
    """

    def save(self) -> None:
        # An UPDATE sends no save signal, so the schedule is not marked changed either
        # (what the base class's no_changes flag is for).
        type(self.model)._default_manager.filter(pk=self.model.pk).update(
            last_run_at=self.model.last_run_at, total_run_count=self.model.total_run_count
        )


class LockedDatabaseScheduler(DatabaseScheduler):  # type: ignore[misc]
    """DatabaseScheduler that sends only while holding the beat lock."""

    Entry = RunWritingEntry

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.lock_timeout = float(settings.CARILLON_BEAT_LOCK_TIMEOUT_SECONDS)
        # The Redis of the background broker (REDIS_URL), directly or through Sentinel.
        self._client = redis_client(settings.REDIS_URL)
        self._lock: Lock = self._client.lock(
            settings.CARILLON_BEAT_LOCK_KEY, timeout=self.lock_timeout, thread_local=False
        )
        self._holding = False
        self._closed = False
        super().__init__(*args, **kwargs)
        # A tick must come well within the lease, or the lease could lapse between two.
        configured: float = getattr(self, "max_interval")  # noqa: B009 - untyped in the base
        self.max_interval = min(configured, self.lock_timeout / 3)

    def tick(self, *args: Any, **kwargs: Any) -> float:
        if self._closed:
            # Beat's stop signal closes the scheduler, then raises SystemExit to end the
            # loop; landing in a finalizer (a sent task's AsyncResult.__del__), that
            # SystemExit is swallowed and the loop ticks on. Without this, the tick took
            # the lock back and the stopped beat went on sending until it was killed,
            # the standby waiting for the lease to lapse.
            raise SystemExit
        if not self._hold_lock():
            # Another beat holds it: try again at the next tick (a few times per lease).
            return float(self.max_interval)
        return float(super().tick(*args, **kwargs))

    def apply_async(self, entry: Any, producer: Any = None, advance: bool = True, **kwargs: Any) -> Any:
        if not (self._holding and self._hold_lock()):
            logger.warning("beat: not sending %s, the lock is no longer ours", entry.name)
            return None
        return super().apply_async(entry, producer, advance, **kwargs)

    def _hold_lock(self) -> bool:
        try:
            if self._holding:
                self._lock.reacquire()
                return True
            if self._lock.acquire(blocking=False):
                self._holding = True
                logger.info("beat: took the lock %s; sending schedules", self._lock.name)
                self._reload()
                return True
        except LockError:
            self._holding = False
            logger.warning("beat: lost the lock %s to another beat; standing by", self._lock.name)
        except RedisError as exc:
            # Without Redis no task can be sent anyway; not knowing, send nothing.
            self._holding = False
            logger.warning("beat: cannot reach Redis for the lock (%s); standing by", exc)
        return False

    def _reload(self) -> None:
        """Forget the in-memory schedule so the next tick reads it, and the last run
        times another beat saved, from the database."""
        self._initial_read = True
        self._heap = None

    @property
    def holding_lock(self) -> bool:
        return self._holding

    def close(self) -> None:
        self._closed = True
        try:
            super().close()
        finally:
            if self._holding:
                self._holding = False
                try:
                    self._lock.release()
                    logger.info("beat: released the lock %s", self._lock.name)
                except (LockError, RedisError):
                    logger.warning("beat: lock %s already gone at shutdown", self._lock.name)
