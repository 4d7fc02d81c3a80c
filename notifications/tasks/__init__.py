"""Celery tasks of the critical app: one delivery task per channel queue, all over the
shared machinery of DeliveryTask (autodiscovered by config/celery.py)."""

from celery import Task

from config.celery import app
from notifications.channels import Channel
from notifications.queues import channel_queue_name, delivery_task_name
from notifications.tasks.base import DeliveryTask


def _delivery_task(channel: str) -> Task:
    @app.task(
        base=DeliveryTask, bind=True, name=delivery_task_name(channel), queue=channel_queue_name(channel), shared=False
    )
    def deliver(self: DeliveryTask, event_id: str, subscriber: str, waited: bool = False) -> None:
        """Send one event's notifications for one subscriber on this channel
        (`waited`: this job was already put off once to join a batch)."""
        self.deliver(event_id, subscriber, waited)

    return deliver


deliver_email = _delivery_task(Channel.EMAIL)
deliver_sms = _delivery_task(Channel.SMS)
deliver_analytics = _delivery_task(Channel.ANALYTICS)
deliver_inapp = _delivery_task(Channel.INAPP)
