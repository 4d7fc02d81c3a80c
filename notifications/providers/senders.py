"""Which sender serves which channel: one delivery at a time, or in batches."""

from notifications.channels import Channel
from notifications.providers.base import BatchSender, Sender
from notifications.providers.email import email_send
from notifications.providers.inapp import inapp_send
from notifications.providers.mixpanel.batches import analytics_deliver
from notifications.providers.twilio.sender import sms_send

SENDERS: dict[str, Sender] = {
    Channel.EMAIL: email_send,
    Channel.SMS: sms_send,
    Channel.INAPP: inapp_send,
}
BATCH_SENDERS: dict[str, BatchSender] = {
    Channel.ANALYTICS: analytics_deliver,
}
