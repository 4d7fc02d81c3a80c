"""Scheduled jobs of the realtime app on the background app (Redis)."""

from config.background import app
from realtime.history import history_trim_expired
from realtime.services import sync_client


@app.task(name="background.realtime_history_trim", shared=False)
def realtime_history_trim() -> int:
    """Drop history messages past REALTIME_HISTORY_MAX_AGE_SECONDS from idle topics."""
    return history_trim_expired(sync_client())
