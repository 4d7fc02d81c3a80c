"""The rooms queue: a durable quorum queue on the critical app's topic exchange.

Room sends have a queue of their own so that a burst of chat traffic never sits in front
of other critical work, and workers can be scaled for it alone. Imported by settings:
kombu only, no Django.
"""

from kombu import Exchange, Queue

TASKS_EXCHANGE = Exchange("carillon.tasks", type="topic", durable=True)
ROOMS_ROUTING_KEY = "carillon.rooms"
ROOMS_QUEUE = Queue(
    "carillon.rooms",
    TASKS_EXCHANGE,
    routing_key=ROOMS_ROUTING_KEY,
    durable=True,
    # A send that keeps killing its worker is requeued at most this often, not forever.
    queue_arguments={"x-queue-type": "quorum", "x-delivery-limit": 20},
)
