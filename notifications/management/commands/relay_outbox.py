import logging
import signal
import threading
from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from notifications.relay import outbox_relay_forever, outbox_relay_once

logger = logging.getLogger(__name__)


class Command(BaseCommand):
    help = "Publish outbox rows the fast path left (broker down, process killed), with confirms."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--once", action="store_true", help="one pass, then exit")
        parser.add_argument("--poll", type=float, default=1.0, help="seconds between passes when idle")

    def handle(self, *args: Any, once: bool, poll: float, **options: Any) -> None:
        if once:
            claimed, published = outbox_relay_once()
            self.stdout.write(f"published {published} of {claimed} claimed outbox rows")
            return
        stop = threading.Event()
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, lambda *_: stop.set())
        logger.info("relay: started, polling every %.1fs", poll)
        outbox_relay_forever(poll_seconds=poll, stop=stop)
