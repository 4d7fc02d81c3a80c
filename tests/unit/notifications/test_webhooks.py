"""Twilio's status callback: forged requests change nothing, real ones only move forward."""

from typing import Any

import pytest
from django.conf import settings
from django.test import Client
from twilio.request_validator import RequestValidator

from notifications.models import Delivery, Event, ProviderCallback
from notifications.services.events import event_publish

pytestmark = pytest.mark.django_db


@pytest.fixture
def delivery(django_user_model: Any) -> Delivery:
    user = django_user_model.objects.create_user("ada")
    event = event_publish(type="password.reset_requested", data={"user_id": user.pk, "reset_url": "https://x.test/r"})
    return Delivery.objects.create(event=event, subscriber="security_sms", channel="sms", recipient="user:1", status="sending")


def callback(delivery: Delivery, status: str, *, token: str | None = None) -> Any:
    path = f"/api/webhooks/twilio/{delivery.pk}/"
    params = {"MessageSid": "SM" + "a" * 32, "MessageStatus": status, "AccountSid": "AC" + "0" * 32}
    signature = RequestValidator(token or settings.TWILIO_AUTH_TOKEN).compute_signature(
        settings.CARILLON_PUBLIC_URL + path, params
    )
    return Client().post(path, params, HTTP_X_TWILIO_SIGNATURE=signature)


def test_forged_callback_answers_403_and_changes_nothing(delivery: Delivery) -> None:
    response = callback(delivery, "delivered", token="not-our-token")

    assert response.status_code == 403
    assert response.json()["error"] == "invalid_signature"
    delivery.refresh_from_db()
    assert delivery.status == "sending" and not ProviderCallback.objects.exists()


def test_unsigned_callback_answers_403(delivery: Delivery) -> None:
    response = Client().post(f"/api/webhooks/twilio/{delivery.pk}/", {"MessageStatus": "delivered"})

    assert response.status_code == 403
    delivery.refresh_from_db()
    assert delivery.status == "sending"


def test_callbacks_move_the_delivery_forward_only_and_repeat_safely(delivery: Delivery) -> None:
    # The callback can beat the worker's own record of the send: "delivered" then "sent".
    assert callback(delivery, "delivered").status_code == 204
    assert callback(delivery, "sent").status_code == 204
    assert callback(delivery, "delivered").status_code == 204

    delivery.refresh_from_db()
    assert delivery.status == "delivered"
    assert delivery.provider_message_id == "SM" + "a" * 32
    assert list(delivery.callbacks.values_list("status", flat=True)) == ["delivered", "sent", "delivered"]


def test_callback_for_an_unknown_delivery_answers_404(delivery: Delivery) -> None:
    delivery.pk = 999_999
    response = callback(delivery, "delivered")

    assert response.status_code == 404
    assert response.json()["error"] == "unknown_delivery"
    assert Event.objects.count() == 1
