import logging
import signal
import threading
from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from core.heap import heap_freeze
from rooms.owner import BALANCE_EVERY_S, CATCH_UP_EVERY_S, IDLE_ROOMS, Owner

logger = logging.getLogger(__name__)


class Command(BaseCommand):
    help = "Sequence rooms as the owner of the shards RabbitMQ gives this process; start several, the others stand by."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--send-threads", type=int, default=32,
                            help="platform calls made at once (each is one room's in-flight message)")
        parser.add_argument("--prefetch", type=int, default=2000, help="inputs read ahead of the group commit")
        parser.add_argument("--catch-up-every", type=float, default=CATCH_UP_EVERY_S,
                            help="seconds between checks for messages whose input was never published")
        parser.add_argument("--idle-rooms", type=int, default=IDLE_ROOMS,
                            help="idle rooms kept in memory; beyond, the longest idle are read back when needed")
        parser.add_argument("--balance-every", type=float, default=BALANCE_EVERY_S,
                            help="seconds between shards handed to other owners while this one holds more than "
                                 "its share (0: never)")

    def handle(self, *args: Any, send_threads: int, prefetch: int, catch_up_every: float, idle_rooms: int,
               balance_every: float, **options: Any) -> None:
        stop = threading.Event()
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, lambda *_: stop.set())
        owner = Owner(send_threads=send_threads, prefetch=prefetch, catch_up_every=catch_up_every, idle_rooms=idle_rooms,
                      balance_every=balance_every)

        frozen = heap_freeze()  # core/heap.py

        def ready() -> None:
            self.stdout.write(f"rooms owner {owner.name}: consuming the shard queues "
                              f"({frozen} objects of start-up left out of garbage collection)")
            self.stdout.flush()

        owner.run(stop, ready)
