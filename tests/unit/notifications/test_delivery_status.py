"""A send recorded: each delivery gets its own provider id and response, and only one
still "sending" becomes "sent" (a provider's callback may have moved it on already)."""

import pytest
from django.utils import timezone

from notifications.models import Delivery, Event
from notifications.providers.base import SendResult
from notifications.services import delivery_status
from notifications.services.delivery_status import deliveries_mark_sent

pytestmark = pytest.mark.django_db


def test_sends_are_recorded_row_by_row_and_never_move_a_delivery_back(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(delivery_status, "MARK_SENT_ROWS", 2)  # three rows: two statements
    event = Event.objects.create(type="demo.ping", version=1, occurred_at=timezone.now(), data={})
    statuses = [Delivery.Status.SENDING, Delivery.Status.DELIVERED, Delivery.Status.SENDING, Delivery.Status.SENDING]
    deliveries = [
        Delivery.objects.create(event=event, subscriber="s", channel="sms", recipient=f"r{n}", status=status,
                                last_error="timed out")
        for n, status in enumerate(statuses)
    ]
    recorded = deliveries[:3]

    deliveries_mark_sent({d.pk: SendResult(provider_message_id=f"m{d.pk}", response={"n": d.pk}) for d in recorded})

    rows = {d.pk: d for d in Delivery.objects.all()}
    assert [rows[d.pk].status for d in deliveries] == ["sent", "delivered", "sent", "sending"]
    for delivery in recorded:
        row = rows[delivery.pk]
        assert (row.provider_message_id, row.provider_response, row.last_error) == (
            f"m{delivery.pk}", {"n": delivery.pk}, "")
        assert (row.sent_at is not None) == (row.status == "sent")
    untouched = rows[deliveries[3].pk]
    assert (untouched.provider_message_id, untouched.last_error, untouched.sent_at) == ("", "timed out", None)
