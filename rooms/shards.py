"""The shard queues: how an input reaches the owner of its room.

Every room belongs to one of SHARDS shards (`Room.shard`). Each shard has a durable
quorum queue `carillon.rooms.shard.NN` with single-active-consumer, bound to the direct
exchange `carillon.rooms.shards` by its number: however many owner processes consume
it, RabbitMQ hands its messages to one at a time, in order, and to the next one when
that one's connection drops (its unacknowledged inputs go back to the queue first).

Inputs are small JSON objects with a `kind`:
- `enqueued`: a message was committed to a room's FIFO (room, provider, recipient,
  message, sequence, key, body), published after the enqueue commits;
- `ack`: the platform acknowledged a message (room, key, provider_message_id), published
  by whichever web process received the webhook;
- `skip`, `retry`: an operator's action on a message (room, message);
- `tick`: sent every second by every owner, so that a standby that became a shard's
  active consumer learns it at once, even when nothing else is sent to the shard; it
  names its owner and when it was sent, so that owners count each other. An owner also
  sends one to a shard when an ack timeout there falls due (a "mark"): reading its own
  tick back tells it every input that reached the queue before has been read.
"""

import logging
from collections.abc import Sequence
from functools import cache, partial
from typing import Any

from django.conf import settings
from kombu import Connection, Exchange, Producer, Queue
from kombu.exceptions import OperationalError

from core.confirms import ConfirmedPublisher
from rooms.models import SHARDS

logger = logging.getLogger(__name__)

SHARDS_EXCHANGE = Exchange("carillon.rooms.shards", type="direct", durable=True)


@cache  # every enqueue and ack publishes to one; kombu binds copies, never this one
def shard_queue(shard: int) -> Queue:
    """One shard's input queue. Its delivery limit stops an input that kills every owner
    that reads it from taking the shard down forever (the record in the database is what
    a new owner resumes from, so a dropped input is at worst a message left queued, which
    the owner's periodic check finds)."""
    return Queue(
        f"carillon.rooms.shard.{shard:02d}",
        SHARDS_EXCHANGE,
        routing_key=f"shard.{shard:02d}",
        durable=True,
        queue_arguments={
            "x-queue-type": "quorum",
            "x-single-active-consumer": True,
            "x-delivery-limit": settings.CARILLON_DELIVERY_LIMIT,
        },
    )


def shard_queues() -> list[Queue]:
    return [shard_queue(shard) for shard in range(SHARDS)]


def _shard_queues_declare(connection: Connection) -> None:
    """Declare every shard queue on a new connection, before its first publish: an input
    published before any owner declared its queue would be unroutable, and dropped."""
    channel = connection.default_channel
    for queue in shard_queues():
        queue(channel).declare()


# The inputs a process publishes (enqueues, acks from webhooks, operators' actions) have
# their confirms awaited together: a web process forwarding acks waits once per group.
# Their queues are declared once per connection, not checked at every publish (kombu's
# per-publish check took 7 % of an enqueue's CPU).
_publisher = ConfirmedPublisher(declare=_shard_queues_declare)


def shard_publish(inputs: Sequence[tuple[int, dict[str, Any]]]) -> None:
    """Publish inputs, each to its shard's owner (shard, input), and wait for RabbitMQ's
    confirms (together with the process's other publishes).

    Raises kombu's and the socket's errors, and OperationalError when RabbitMQ refused
    any of them: the caller decides whether its work is done without these inputs
    (everything an input says is also in the database, which the owner reads back on its
    periodic check and when it takes a shard).
    """
    answers = _publisher.publish([partial(_publish, shard_queue(shard), payload) for shard, payload in inputs])
    refused = answers.count(False)
    if refused:
        raise OperationalError(f"RabbitMQ refused {refused} of {len(inputs)} inputs to the shard queues (nack)")


def _publish(queue: Queue, payload: dict[str, Any], producer: Producer) -> None:
    producer.publish(payload, exchange=SHARDS_EXCHANGE, routing_key=queue.routing_key, serializer="json",
                     delivery_mode=2, retry=False)
