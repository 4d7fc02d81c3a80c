"""Celery tasks of the critical app: per channel, a delivery task (one event's work for one
subscriber; for a broadcast, its planning; several taken together when the worker holds
several, notifications/tasks/together.py) and a chunk task (one chunk of a broadcast), all
over the shared machinery of DeliveryTask (autodiscovered by config/celery.py)."""

from celery import Task

from config.celery import app
from notifications.channels import Channel, Lane
from notifications.queues import channel_queue_name, chunk_task_name, delivery_task_name
from notifications.tasks.base import DeliveryTask
from notifications.tasks.together import TogetherDeliveryTask


def _delivery_task(channel: str) -> Task:
    @app.task(
        base=TogetherDeliveryTask, bind=True, name=delivery_task_name(channel), own_queue=channel_queue_name(channel), shared=False
    )
    def deliver(self: DeliveryTask, event_id: str, subscriber: str, waited: bool = False) -> None:
        """Send one event's notifications for one subscriber on this channel, or plan a
        broadcast's chunks (`waited`: this job was already put off once)."""
        self.deliver(event_id, subscriber, waited=waited)

    return deliver


def _chunk_task(channel: str) -> Task:
    @app.task(
        base=DeliveryTask, bind=True, name=chunk_task_name(channel), own_queue=channel_queue_name(channel, Lane.BULK),
        shared=False,
    )
    def deliver_chunk(self: DeliveryTask, event_id: str, subscriber: str, chunk: int, waited: bool = False) -> None:
        """Send one chunk of a broadcast's recipients on this channel."""
        self.deliver(event_id, subscriber, chunk=chunk, waited=waited)

    return deliver_chunk


deliver_email = _delivery_task(Channel.EMAIL)
deliver_sms = _delivery_task(Channel.SMS)
deliver_analytics = _delivery_task(Channel.ANALYTICS)
deliver_inapp = _delivery_task(Channel.INAPP)
deliver_email_chunk = _chunk_task(Channel.EMAIL)
deliver_sms_chunk = _chunk_task(Channel.SMS)
deliver_analytics_chunk = _chunk_task(Channel.ANALYTICS)
deliver_inapp_chunk = _chunk_task(Channel.INAPP)
