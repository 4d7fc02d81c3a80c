from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from notifications.dead_letters import dead_letter_drain


class Command(BaseCommand):
    help = "Record every dead-lettered message as a FailedJob (safe to run again, or concurrently)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--limit", type=int, default=1000, help="messages per queue at most")

    def handle(self, *args: Any, limit: int, **options: Any) -> None:
        self.stdout.write(str(dead_letter_drain(limit=limit)))
