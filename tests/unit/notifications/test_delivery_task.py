"""The delivery task's policy: a transient error is retried with backoff, a permanent one
becomes a failed job at once and is rejected (RabbitMQ dead-letters it), and a job
waiting for its batch is put off, not failed. The send itself is stubbed: what happens
at the provider is the integration tests' business."""

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any
from unittest import mock

import pytest
from celery.exceptions import Reject
from django.test import override_settings
from kombu.exceptions import OperationalError

from core.errors import ProviderPermanentError, ProviderTransientError
from notifications.exceptions import BatchPending
from notifications.models import FailedJob
from notifications.services.deliveries import PutOff, Work
from notifications.tasks import deliver_sms, together
from notifications.tasks.base import DeliveryTask, retry_countdown
from notifications.tasks.together import _due

pytestmark = pytest.mark.django_db

EVENT_ID = str(uuid.UUID(int=42))


def run(*outcomes: BaseException | None, max_retries: int = 6) -> tuple[mock.MagicMock, object]:
    """Run the SMS task eagerly (its retries too) while the send has these outcomes in
    turn (None: it went through). Return the stubbed send and the task's result."""
    send = mock.MagicMock(side_effect=list(outcomes))
    with (
        mock.patch("notifications.tasks.base.delivery_send", send),
        override_settings(CARILLON_DELIVERY_MAX_RETRIES=max_retries),
    ):
        result = deliver_sms.apply(args=[EVENT_ID, "security_sms"], task_id=f"{EVENT_ID}.security_sms.1")
    return send, result


def test_a_transient_error_is_retried_until_the_send_goes_through() -> None:
    send, result = run(ProviderTransientError("503"), ProviderTransientError("timeout", in_doubt=True), None)

    assert result.successful()  # type: ignore[attr-defined]
    assert send.call_count == 3
    assert all(c.kwargs == {"event_id": EVENT_ID, "subscriber_name": "security_sms", "chunk": None, "waited": False}
               for c in send.call_args_list)
    assert not FailedJob.objects.exists()


def test_transient_errors_past_the_retry_limit_become_one_failed_job() -> None:
    send, result = run(*[ProviderTransientError("503")] * 3, max_retries=2)

    assert send.call_count == 3  # the first attempt and two retries
    assert isinstance(result.result, Reject) and result.result.requeue is False  # type: ignore[attr-defined]
    [failed] = FailedJob.objects.all()
    assert (failed.error_class, failed.attempts, failed.queue) == ("ProviderTransientError", 3, "carillon.sms")
    assert failed.args == [EVENT_ID, "security_sms"]


def test_a_permanent_error_is_a_failed_job_at_once_and_rejected_without_requeue() -> None:
    send, result = run(ProviderPermanentError("Twilio 400: not a mobile number"))

    assert send.call_count == 1
    assert isinstance(result.result, Reject) and result.result.requeue is False  # type: ignore[attr-defined]
    [failed] = FailedJob.objects.all()
    assert (failed.error_class, failed.attempts, failed.task_id) == (
        "ProviderPermanentError", 1, f"{EVENT_ID}.security_sms.1"
    )
    assert "not a mobile number" in failed.error_message


def test_an_unexpected_error_is_permanent_too() -> None:
    send, result = run(KeyError("subscriber"))

    assert send.call_count == 1 and isinstance(result.result, Reject)  # type: ignore[attr-defined]
    assert FailedJob.objects.get().error_class == "KeyError"


def test_a_job_waiting_for_its_batch_is_published_again_for_later_under_the_same_id() -> None:
    with mock.patch.object(deliver_sms, "apply_async") as again:
        send, result = run(BatchPending(retry_after=7))

    assert result.successful() and send.call_count == 1  # type: ignore[attr-defined]
    again.assert_called_once_with(
        args=[EVENT_ID, "security_sms"], kwargs={"waited": True}, countdown=7, task_id=f"{EVENT_ID}.security_sms.1"
    )
    assert not FailedJob.objects.exists()


@override_settings(CARILLON_RETRY_BACKOFF_SECONDS=2, CARILLON_RETRY_BACKOFF_MAX_SECONDS=60)
def test_the_retry_countdown_grows_with_each_retry_up_to_its_ceiling() -> None:
    for retries, ceiling in [(0, 2), (1, 4), (3, 16), (10, 60)]:
        for _ in range(20):
            assert max(1, ceiling // 2) <= retry_countdown(retries) <= ceiling


def test_a_put_off_message_joins_a_batch_only_once_its_countdown_is_over() -> None:
    # RabbitMQ's delayed delivery hands the message over once due; one that comes early
    # (a clock ahead of the worker's) goes to Celery, which holds it until its eta.
    now = datetime.now(UTC)
    assert _due(None) and _due("")
    assert _due((now - timedelta(seconds=1)).isoformat())
    assert _due((now - timedelta(seconds=1)).replace(tzinfo=None).isoformat())  # naive: UTC, as Celery writes it
    assert not _due((now + timedelta(seconds=30)).isoformat())
    assert not _due("not a time")


def test_a_batch_job_that_cannot_be_put_off_is_left_to_run_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    # The broker gone at the moment a batch publishes a put-off copy: that job is not
    # acknowledged as finished, so its message runs as the ordinary task, which writes
    # nothing twice and puts itself off (or retries) on its own.
    outcomes: list[bool | PutOff] = [True, PutOff(1), PutOff(1), False]
    monkeypatch.setattr(together, "deliveries_send_together", lambda works: outcomes)
    published: list[str] = []

    def put_off(task: DeliveryTask, task_id: str, args: list[Any], kwargs: dict[str, Any], seconds: float) -> None:
        if task_id == "job-3":
            raise OperationalError("connection refused")
        published.append(task_id)

    monkeypatch.setattr(DeliveryTask, "put_off", put_off)
    jobs = [(f"job-{n}", deliver_sms.name, Work(EVENT_ID, "security_sms")) for n in range(1, 5)]

    assert together._send_together(jobs, 1) == [True, True, False, False]
    assert published == ["job-2"]
