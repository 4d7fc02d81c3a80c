import json
from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from config.celery import app as critical_app
from notifications.queues import topology, topology_declare, topology_definitions
from notifications.subscribers import subscribers


class Command(BaseCommand):
    help = "Print Carillon's RabbitMQ topology and subscribers; export it as definitions JSON, or apply it."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--json", action="store_true", help="RabbitMQ definitions JSON (import_definitions)")
        parser.add_argument("--apply", action="store_true", help="declare it on the broker now")

    def handle(self, *args: Any, json: bool, apply: bool, **options: Any) -> None:
        if json:
            self.stdout.write(_dumps(topology_definitions()))
            return
        exchanges, queues = topology()
        self.stdout.write("Exchanges:")
        for exchange in exchanges:
            self.stdout.write(f"  {exchange.name} ({exchange.type}, durable)")
        self.stdout.write("Queues (binding → queue, arguments):")
        for queue in queues:
            arguments = ", ".join(f"{k}={v}" for k, v in (getattr(queue, "queue_arguments", None) or {}).items())
            self.stdout.write(f"  {queue.exchange.name} --{queue.routing_key}--> {queue.name}  [{arguments}]")
        self.stdout.write("Subscribers (event types → channel):")
        for subscriber in subscribers():
            self.stdout.write(f"  {subscriber.name}: {', '.join(subscriber.event_types)} → {subscriber.channel}")
        if apply:
            with critical_app.connection_for_write() as connection:
                topology_declare(connection)
            self.stdout.write(self.style.SUCCESS("declared on the broker"))


def _dumps(value: Any) -> str:
    return json.dumps(value, indent=2, sort_keys=True)
