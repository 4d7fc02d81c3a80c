"""Room tasks on the critical app: hand one message to the provider, enforce a timeout.

Neither waits for an ack: the ack arrives by webhook (rooms.api.views.chat_webhook) and
puts the next message in flight; the timeout check is a delayed task (RabbitMQ's native
delayed delivery on quorum queues), so a slow room holds no worker.
"""

import logging

from celery import Task
from django.conf import settings

from config.celery import app
from core.errors import ProviderPermanentError, ProviderTransientError
from rooms.models import RoomMessage
from rooms.providers import chat_send
from rooms.queues import ROOM_SEND_TASK
from rooms.services.acks import room_message_ack_timeout
from rooms.services.sending import (
    room_message_give_up,
    room_message_record_send,
    room_message_send_permit,
)

logger = logging.getLogger(__name__)


@app.task(
    name=ROOM_SEND_TASK,
    shared=False,
    bind=True,
    autoretry_for=(ProviderTransientError,),
    retry_backoff=1,
    retry_backoff_max=30,
    max_retries=8,
)
def room_message_send_task(self: Task, message_id: int, attempt: int) -> None:
    """Call the provider for one attempt, then arm its ack timeout."""
    try:
        permit = room_message_send_permit(message_id=message_id, attempt=attempt)
    except RoomMessage.DoesNotExist:
        logger.warning("message %s no longer exists; not sent", message_id)
        return
    if permit is None:
        logger.info("message %s attempt %s no longer in flight; not sent", message_id, attempt)
        return
    logger.info("room %s: sending message %s attempt %s", permit.room_id, message_id, attempt)
    try:
        result = chat_send(
            room=permit.recipient,
            body=permit.body,
            idempotency_key=permit.idempotency_key,
            sequence=permit.sequence,
            callback_url=settings.CARILLON_PUBLIC_URL.rstrip("/") + "/api/webhooks/chat/",
        )
    except ProviderPermanentError as exc:
        room_message_give_up(message_id=message_id, attempt=attempt, reason=str(exc))
        return
    except ProviderTransientError as exc:
        if self.request.retries >= (self.max_retries or 0):
            room_message_give_up(message_id=message_id, attempt=attempt, reason=str(exc))
            return
        raise
    timeout_ms = room_message_record_send(
        message_id=message_id, attempt=attempt, provider_message_id=result.provider_message_id
    )
    if timeout_ms is not None:
        room_message_ack_timeout_task.apply_async((message_id, attempt), countdown=ack_timeout_countdown(timeout_ms))


def ack_timeout_countdown(timeout_ms: int) -> float:
    """The countdown of a timeout check, in seconds.

    On quorum queues Celery delays through RabbitMQ (celery_delayed_* exchanges) by whole
    seconds and refuses a delay under one second; the fraction above a whole second is
    held by the worker's timer until the ETA. So one second is the shortest timeout.
    """
    return max(timeout_ms, MIN_ACK_TIMEOUT_MS) / 1000


MIN_ACK_TIMEOUT_MS = 1000


@app.task(name="rooms.message_ack_timeout", shared=False)
def room_message_ack_timeout_task(message_id: int, attempt: int) -> str:
    """Resend or move on if this attempt is still unacknowledged."""
    try:
        return room_message_ack_timeout(message_id=message_id, attempt=attempt)
    except RoomMessage.DoesNotExist:
        logger.warning("message %s no longer exists; timeout check dropped", message_id)
        return "missing"
