"""Room tasks on the background app (Redis, scheduled by beat): the recovery sweep."""

import logging

from config.background import app
from rooms.services.recovery import room_recover

logger = logging.getLogger(__name__)


@app.task(name="background.rooms_recover", shared=False)
def rooms_recover_task(stalled_after_s: float = 300.0) -> dict[str, int]:
    """Publish again the sends a crash lost (rooms.services.recovery.room_recover)."""
    report = room_recover(stalled_after_s=stalled_after_s)
    if report.resent or report.dispatched:
        logger.warning("rooms recovery: %s sends published again, %s idle rooms dispatched",
                       len(report.resent), len(report.dispatched))
    return {"resent": len(report.resent), "dispatched": len(report.dispatched)}
