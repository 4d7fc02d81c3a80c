"""What Mixpanel's /import answers decides each analytics delivery: taken, refused for
good (failed, never retried), to be tried again, or put off for as long as it asks."""

import time
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from django.test import override_settings
from django.utils import timezone

from core.errors import ProviderTransientError
from core.send_rate import SendRateExceeded
from notifications.exceptions import BatchPending
from notifications.models import Delivery, Event
from notifications.providers.mixpanel.batches import analytics_deliver, analytics_flush
from sandbox.client import SandboxClient
from tests.factories import EventFactory, recipient_user

pytestmark = [pytest.mark.integration, pytest.mark.django_db]


def analytics_delivery(event: Event, username: str) -> Delivery:
    user = recipient_user(username)
    return Delivery.objects.create(
        event=event, subscriber="product_analytics", recipient=f"user:{user.pk}", channel="analytics", user_id=user.pk
    )


def test_an_event_mixpanel_refuses_fails_alone_and_the_rest_of_its_batch_is_sent(
    sandbox: SandboxClient, pipeline_settings: None
) -> None:
    # Mixpanel refuses events dated before 1971, whatever endpoint; /import says which.
    ancient = analytics_delivery(EventFactory.create(occurred_at=datetime(1970, 6, 1, tzinfo=UTC)), "old")
    recent = analytics_delivery(EventFactory.create(), "new")

    assert analytics_flush(limit=10) == 2

    ancient.refresh_from_db()
    recent.refresh_from_db()
    assert recent.status == Delivery.Status.SENT
    assert ancient.status == Delivery.Status.FAILED and ancient.claim_token is None
    assert "properties.time" in ancient.last_error and "1971" in ancient.last_error
    [taken] = sandbox.received("mixpanel")
    assert taken["endpoint"] == "import" and taken["properties"]["distinct_id"] == str(recent.user_id)
    # Nothing is left for a later flush to send again.
    assert analytics_flush(limit=10) == 0


def test_a_run_whose_delivery_another_flush_holds_sends_the_rest_and_waits_for_that_one(
    sandbox: SandboxClient, pipeline_settings: None
) -> None:
    own = [analytics_delivery(EventFactory.create(), f"held{n}") for n in range(3)]
    other_flush = uuid.uuid4()
    Delivery.objects.filter(pk=own[0].pk).update(status=Delivery.Status.SENDING, claim_token=other_flush,
                                                 claimed_until=timezone.now() + timedelta(seconds=60))

    with pytest.raises(BatchPending):  # run again once the other flush's lease is over
        analytics_deliver(own, waited=True)

    rows = {d.pk: (d.status, d.claim_token) for d in Delivery.objects.all()}
    assert rows == {own[0].pk: ("sending", other_flush), own[1].pk: ("sent", None), own[2].pk: ("sent", None)}
    inbox = sandbox.inbox("mixpanel")
    assert (inbox["requests"], len(inbox["received"])) == (1, 2)


@pytest.mark.parametrize("status", [401, 413])
def test_a_request_mixpanel_refuses_whole_fails_its_deliveries_instead_of_retrying_them(
    sandbox: SandboxClient, pipeline_settings: None, status: int
) -> None:
    deliveries = [analytics_delivery(EventFactory.create(), name) for name in ("ann", "bob")]
    sandbox.set_knobs("mixpanel", fail_next=1, error_status=status)

    assert analytics_flush(limit=10) == 2

    for delivery in deliveries:
        delivery.refresh_from_db()
        assert delivery.status == Delivery.Status.FAILED
        assert delivery.last_error.startswith(f"Mixpanel {status}:")
    assert sandbox.received("mixpanel") == []
    assert analytics_flush(limit=10) == 0


def test_a_wrong_project_secret_fails_the_batch_with_mixpanels_reason(
    sandbox: SandboxClient, pipeline_settings: None
) -> None:
    delivery = analytics_delivery(EventFactory.create(), "cy")

    with override_settings(MIXPANEL_API_SECRET="not-the-secret"):
        assert analytics_flush(limit=10) == 1

    delivery.refresh_from_db()
    assert delivery.status == Delivery.Status.FAILED
    assert delivery.last_error == "Mixpanel 401: invalid project secret"


def test_mixpanels_5xx_leaves_the_batch_pending_for_the_next_flush(
    sandbox: SandboxClient, pipeline_settings: None
) -> None:
    delivery = analytics_delivery(EventFactory.create(), "di")
    sandbox.set_knobs("mixpanel", fail_next=1, error_status=503)

    with pytest.raises(ProviderTransientError, match="Mixpanel 503"):
        analytics_flush(limit=10)

    delivery.refresh_from_db()
    assert delivery.status == Delivery.Status.PENDING and delivery.claim_token is None
    assert analytics_flush(limit=10) == 1
    delivery.refresh_from_db()
    assert delivery.status == Delivery.Status.SENT


def test_mixpanels_429_puts_the_batch_off_for_its_retry_after_and_pauses_analytics(
    sandbox: SandboxClient, pipeline_settings: None
) -> None:
    # At one request per 5 s the sandbox answers the first 429, Retry-After: 4.
    sandbox.set_knobs("mixpanel", rate_limit_per_second=0.2)
    delivery = analytics_delivery(EventFactory.create(type="account.created"), "lin")

    with pytest.raises(SendRateExceeded) as put_off:
        analytics_flush(limit=10)

    assert put_off.value.retry_after == 4
    delivery.refresh_from_db()
    assert delivery.status == Delivery.Status.PENDING and delivery.claim_token is None  # for the next flush
    # A paced sender waits the pause out (4 s, under the 5 s it may sleep) instead of
    # asking Mixpanel again at once.
    sandbox.set_knobs("mixpanel", rate_limit_per_second=0)
    started = time.monotonic()
    with override_settings(CARILLON_SEND_RATES={"analytics": 100.0}):
        assert analytics_flush(limit=10) == 1
    assert time.monotonic() - started >= 3
    delivery.refresh_from_db()
    assert delivery.status == Delivery.Status.SENT
    assert sandbox.inbox("mixpanel")["rate_limited"] == 1
