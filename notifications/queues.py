"""RabbitMQ topology of the critical path, declared with kombu: exchanges, queues, bindings.

- `carillon.events` (topic): every event's raw envelope, routing key = event type, for
  services in other languages to bind their own queues to. Carillon does not consume it.
- `carillon.tasks` (topic): Celery task messages. Two durable quorum queues per channel,
  one per lane: `carillon.<channel>` (transactional, bound by `notify.<channel>`) and
  `carillon.<channel>.bulk` (broadcasts, `notify.<channel>.bulk`), consumed by separate
  workers so that bulk work never delays transactional work. Each subscriber's work is its own message sent to exactly
  one queue, never fanned out by a binding: Task.retry() republishes with the original
  exchange and routing key, so a fanned-out message would be retried into every queue.
- `carillon.dlx` (topic): where channel queues dead-letter (rejected, or past the
  delivery limit); one quorum dead-letter queue per channel, bound by `dead.<channel>`.
- `carillon.rooms.shards` (direct): ordered per-room delivery's shard queues, declared
  by their publishers and owners (rooms/shards.py), not consumed by Celery.

Each Django app declares its queues with `queue_declare` when it is ready; the critical
app's workers consume among them (`-Q`) and declare the whole topology at start-up.
"""

from typing import Any

from celery.signals import worker_init
from django.conf import settings
from kombu import Connection, Exchange, Queue

from config.celery import app as critical_app
from core.db.sqlite3.base import write_lock_yield
from notifications.channels import Channel, Lane

EVENTS_EXCHANGE = Exchange("carillon.events", type="topic", durable=True)
TASKS_EXCHANGE = Exchange("carillon.tasks", type="topic", durable=True)
DEAD_LETTER_EXCHANGE = Exchange("carillon.dlx", type="topic", durable=True)

DEFAULT_QUEUE_NAME = "carillon.default"


def _quorum(**arguments: Any) -> dict[str, Any]:
    return {"x-queue-type": "quorum", **arguments}


def _lane_suffix(lane: str) -> str:
    return "" if lane == Lane.TRANSACTIONAL else f".{lane}"


def channel_queue_name(channel: str, lane: str = Lane.TRANSACTIONAL) -> str:
    return f"carillon.{channel}{_lane_suffix(lane)}"


def channel_queue(channel: str, lane: str = Lane.TRANSACTIONAL) -> Queue:
    """A work queue of one channel and lane: quorum, dead-lettering, with a delivery limit.

    The delivery limit bounds a poison message that kills its worker: with
    task_reject_on_worker_lost it would otherwise be redelivered forever. Both lanes of
    a channel dead-letter into its one dead-letter queue.
    """
    return Queue(
        channel_queue_name(channel, lane),
        TASKS_EXCHANGE,
        routing_key=f"notify.{channel}{_lane_suffix(lane)}",
        durable=True,
        queue_arguments=_quorum(
            **{
                "x-dead-letter-exchange": DEAD_LETTER_EXCHANGE.name,
                "x-dead-letter-routing-key": f"dead.{channel}",
                "x-delivery-limit": settings.CARILLON_DELIVERY_LIMIT,
            }
        ),
    )


def dead_letter_queue(channel: str) -> Queue:
    return Queue(
        f"{channel_queue_name(channel)}.dlq",
        DEAD_LETTER_EXCHANGE,
        routing_key=f"dead.{channel}",
        durable=True,
        queue_arguments=_quorum(),
    )


def default_queue() -> Queue:
    return Queue(
        DEFAULT_QUEUE_NAME, TASKS_EXCHANGE, routing_key=DEFAULT_QUEUE_NAME, durable=True,
        queue_arguments=_quorum(),
    )


def delivery_task_name(channel: str) -> str:
    """The Celery task that delivers on a channel (built in notifications/tasks/__init__.py)."""
    return f"notifications.{channel}.deliver"


def chunk_task_name(channel: str) -> str:
    """The Celery task that sends one chunk of a broadcast on a channel."""
    return f"notifications.{channel}.deliver_chunk"


def queue_declare(queue: Queue) -> None:
    """Add a queue to the critical app: workers may consume it and declare it at start-up."""
    if all(known.name != queue.name for known in critical_app.conf.task_queues):
        critical_app.conf.task_queues.append(queue)


def notification_queues_declare() -> None:
    """The notifications app's queues: the default one and one per channel and lane."""
    queues = [channel_queue(channel, lane) for channel in Channel.values for lane in Lane.values]
    for queue in (default_queue(), *queues):
        queue_declare(queue)


def task_queues() -> list[Queue]:
    """The queues Celery workers of the critical app consume (`-Q` picks among them)."""
    return list(critical_app.conf.task_queues)


def dead_letter_queues() -> list[Queue]:
    return [dead_letter_queue(channel) for channel in Channel.values]


def topology() -> tuple[list[Exchange], list[Queue]]:
    """Everything Carillon declares on RabbitMQ."""
    exchanges = [EVENTS_EXCHANGE, TASKS_EXCHANGE, DEAD_LETTER_EXCHANGE]
    return exchanges, [*task_queues(), *dead_letter_queues()]


def topology_declare(connection: Connection) -> None:
    """Declare every exchange, queue and binding (idempotent: safe at every start-up)."""
    exchanges, queues = topology()
    amqp_channel = connection.default_channel  # "channel" alone means a delivery channel here
    for exchange in exchanges:
        exchange(amqp_channel).declare()
    for queue in queues:
        queue(amqp_channel).declare()


@worker_init.connect
def _declare_topology(sender: Any, **kwargs: Any) -> None:
    """Declare every exchange and queue, dead-letter queues included, before consuming.

    A worker declares only the queues it consumes; the dead-letter queues and the events
    exchange must exist before the first message is rejected or published.
    """
    if sender.app is not critical_app:
        return  # a background worker: its broker is Redis
    with critical_app.connection_for_write() as connection:
        topology_declare(connection)


def bulk_lane_worker(queues: set[str]) -> bool:
    """Whether a worker consuming `queues` works for the bulk lane only: a bulk queue, and
    no transactional channel queue."""
    bulk = {channel_queue_name(channel, Lane.BULK) for channel in Channel}
    return bool(queues & bulk) and not queues & {channel_queue_name(channel) for channel in Channel}


@worker_init.connect
def _bulk_workers_yield_the_write_lock(sender: Any, **kwargs: Any) -> None:
    """A bulk lane's worker waits for SQLite's write lock behind every other process
    (core/db/sqlite3)."""
    consumed = sender.app.amqp.queues.consume_from  # what -Q selected, else every queue known
    if sender.app is critical_app and consumed and bulk_lane_worker(set(consumed)):
        write_lock_yield()


def topology_definitions() -> dict[str, Any]:
    """The topology as RabbitMQ definitions JSON (importable with `rabbitmqctl import_definitions`)."""
    exchanges, queues = topology()
    return {
        "exchanges": [
            {"name": e.name, "vhost": "/", "type": e.type, "durable": True, "auto_delete": False,
             "internal": False, "arguments": {}}
            for e in exchanges
        ],
        "queues": [
            {"name": q.name, "vhost": "/", "durable": True, "auto_delete": False,
             "arguments": dict(getattr(q, "queue_arguments", None) or {})}
            for q in queues
        ],
        "bindings": [
            {"source": q.exchange.name, "vhost": "/", "destination": q.name, "destination_type": "queue",
             "routing_key": q.routing_key, "arguments": {}}
            for q in queues
        ],
    }
