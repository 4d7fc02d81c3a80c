"""The rooms queue: a durable quorum queue on the critical app's task exchange.

Room sends have a queue of their own so that a burst of chat traffic never sits in front
of other critical work, and workers can be scaled for it alone. The rooms app declares it
when ready (rooms/apps.py), so it is in the topology every worker declares at start-up.
"""

from django.conf import settings
from kombu import Exchange, Queue

from config.celery import app as critical_app

ROOMS_QUEUE_NAME = "carillon.rooms"
ROOMS_ROUTING_KEY = "carillon.rooms"
# rooms/tasks.py runs it; services publish it by name, so the state machine does not
# import the tasks that call back into it.
ROOM_SEND_TASK = "rooms.message_send"


def room_send_publish(message_id: int, attempt: int) -> None:
    """Publish one send attempt (CELERY_TASK_ROUTES puts rooms.* on carillon.rooms)."""
    # ignore_result: without it send_task first declares the result backend's reply queue,
    # retrying forever while RabbitMQ is down instead of failing this publish.
    critical_app.send_task(ROOM_SEND_TASK, args=[message_id, attempt], ignore_result=True)


def rooms_queue(tasks_exchange: Exchange) -> Queue:
    """The queue of `rooms.*` tasks.

    No dead-letter exchange: a send or timeout task carries only (message id, attempt),
    and the message row stays in flight in the database, where the room shows it stuck
    and an operator retries or skips it. The delivery limit keeps a send that kills its
    worker every time from looping forever (task_reject_on_worker_lost requeues it).
    """
    return Queue(
        ROOMS_QUEUE_NAME,
        tasks_exchange,
        routing_key=ROOMS_ROUTING_KEY,
        durable=True,
        queue_arguments={"x-queue-type": "quorum", "x-delivery-limit": settings.CARILLON_DELIVERY_LIMIT},
    )
