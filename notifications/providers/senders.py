"""Which sender serves which channel."""

from notifications.channels import Channel
from notifications.providers.analytics import analytics_send
from notifications.providers.base import Sender
from notifications.providers.email import email_send
from notifications.providers.inapp import inapp_send
from notifications.providers.sms import sms_send

SENDERS: dict[str, Sender] = {
    Channel.EMAIL: email_send,
    Channel.SMS: sms_send,
    Channel.ANALYTICS: analytics_send,
    Channel.INAPP: inapp_send,
}
