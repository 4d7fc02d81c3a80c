"""Twilio's message statuses, as Carillon's delivery statuses."""

from notifications.models import Delivery

# Twilio's other statuses (queued, sending, accepted, ...) say nothing a delivery records.
TWILIO_STATUSES = {
    "sent": Delivery.Status.SENT,
    "delivered": Delivery.Status.DELIVERED,
    "undelivered": Delivery.Status.UNDELIVERED,
    "failed": Delivery.Status.FAILED,
}


def twilio_delivery_status(message_status: str) -> Delivery.Status | None:
    """The delivery status a Twilio MessageStatus means, or None if it moves nothing."""
    return TWILIO_STATUSES.get(message_status)
