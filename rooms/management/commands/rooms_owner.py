import logging
import signal
import threading
from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from rooms.owner import CATCH_UP_EVERY_S, Owner

logger = logging.getLogger(__name__)


class Command(BaseCommand):
    help = "Sequence rooms as the owner of the shards RabbitMQ gives this process; start several, the others stand by."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--send-threads", type=int, default=32,
                            help="platform calls made at once (each is one room's in-flight message)")
        parser.add_argument("--prefetch", type=int, default=2000, help="inputs read ahead of the group commit")
        parser.add_argument("--catch-up-every", type=float, default=CATCH_UP_EVERY_S,
                            help="seconds between checks for messages whose input was never published")

    def handle(self, *args: Any, send_threads: int, prefetch: int, catch_up_every: float, **options: Any) -> None:
        stop = threading.Event()
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, lambda *_: stop.set())
        owner = Owner(send_threads=send_threads, prefetch=prefetch, catch_up_every=catch_up_every)

        def ready() -> None:
            self.stdout.write(f"rooms owner {owner.name}: consuming the shard queues")
            self.stdout.flush()

        owner.run(stop, ready)
