"""Replay and discard of failed jobs: who may, what it records (API, admin, command)."""

from typing import Any

import pytest
from django.contrib.auth.models import Permission
from django.core.management import call_command
from django.test import Client
from rest_framework.test import APIClient

from notifications.models import Delivery, FailedJob, OutboxMessage
from notifications.services.events import event_publish

pytestmark = pytest.mark.django_db


@pytest.fixture
def failed_job(django_user_model: Any) -> FailedJob:
    user = django_user_model.objects.create_user("ada")
    event = event_publish(type="password.reset_requested", data={"user_id": user.pk, "reset_url": "https://x.test/r"})
    OutboxMessage.objects.update(published_at="2026-01-01T00:00:00Z")
    delivery = Delivery.objects.create(
        event=event, subscriber="security_sms", channel="sms", recipient=f"user:{user.pk}", status="failed"
    )
    return FailedJob.objects.create(
        task_name="notifications.sms.deliver", task_id=f"{event.pk}.security_sms", queue="carillon.sms",
        args=[str(event.pk), "security_sms"], event=event, delivery=delivery,
        error_class="ProviderPermanentError", error_message="Twilio 400", attempts=1,
    )


def staff(django_user_model: Any, *, can_replay: bool) -> Any:
    user = django_user_model.objects.create_user("operator" if can_replay else "viewer", is_staff=True)
    user.user_permissions.add(Permission.objects.get(codename="view_failedjob"))
    if can_replay:
        user.user_permissions.add(Permission.objects.get(codename="replay_failedjob"))
    return user


def test_replay_reopens_the_failed_delivery_and_enqueues_through_the_outbox(
    failed_job: FailedJob, django_user_model: Any
) -> None:
    api = APIClient()
    api.force_authenticate(staff(django_user_model, can_replay=True))

    response = api.post(f"/api/failed-jobs/{failed_job.pk}/replay/")
    again = api.post(f"/api/failed-jobs/{failed_job.pk}/replay/")

    assert response.status_code == 200 and response.json()["state"] == "replayed"
    assert again.status_code == 409 and again.json()["error"] == "invalid_state"
    assert Delivery.objects.get(failed_jobs=failed_job).status == "pending"
    [row] = OutboxMessage.objects.filter(published_at__isnull=True)
    assert row.payload == {"task": "notifications.sms.deliver", "args": failed_job.args, "queue": "carillon.sms"}
    [action] = failed_job.actions.all()
    assert action.kind == "replay" and action.user is not None and action.user.username == "operator"


def test_without_the_replay_permission_neither_api_nor_admin_replays(
    failed_job: FailedJob, django_user_model: Any
) -> None:
    viewer = staff(django_user_model, can_replay=False)
    api = APIClient()
    api.force_authenticate(viewer)
    browser = Client()
    browser.force_login(viewer)

    response = api.post(f"/api/failed-jobs/{failed_job.pk}/replay/")
    page = browser.get("/admin/notifications/failedjob/")
    posted = browser.post(
        "/admin/notifications/failedjob/",
        {"action": "replay_selected", "_selected_action": [failed_job.pk], "confirm": "yes"},
    )

    assert response.status_code == 403 and "replay_failedjob" in response.json()["message"]
    assert page.status_code == 200 and b"replay_selected" not in page.content
    assert posted.status_code in (200, 302)
    failed_job.refresh_from_db()
    assert failed_job.state == "failed" and not failed_job.actions.exists()
    assert not OutboxMessage.objects.filter(published_at__isnull=True).exists()


def test_admin_replay_asks_for_confirmation_then_replays(failed_job: FailedJob, django_user_model: Any) -> None:
    browser = Client()
    browser.force_login(staff(django_user_model, can_replay=True))
    form = {"action": "replay_selected", "_selected_action": [failed_job.pk]}

    confirmation = browser.post("/admin/notifications/failedjob/", form)
    failed_job.refresh_from_db()
    state_after_first_post = failed_job.state
    done = browser.post("/admin/notifications/failedjob/", {**form, "confirm": "yes"})

    assert b"Yes, replay 1" in confirmation.content and state_after_first_post == "failed"
    assert done.status_code == 302
    failed_job.refresh_from_db()
    assert failed_job.state == "replayed"


def test_discard_needs_a_reason_and_keeps_it(failed_job: FailedJob, django_user_model: Any) -> None:
    api = APIClient()
    api.force_authenticate(staff(django_user_model, can_replay=True))

    refused = api.post(f"/api/failed-jobs/{failed_job.pk}/discard/", {}, format="json")
    done = api.post(f"/api/failed-jobs/{failed_job.pk}/discard/", {"reason": "user deleted"}, format="json")

    assert refused.status_code == 400 and refused.json()["error"] == "reason_required"
    assert done.json() == {"id": failed_job.pk, "state": "discarded"}
    assert failed_job.actions.get().reason == "user deleted"


def test_command_lists_and_replays_by_filter(failed_job: FailedJob, capsys: pytest.CaptureFixture[str]) -> None:
    call_command("failed_jobs", "list", "--queue", "carillon.sms")
    call_command("failed_jobs", "replay", "--error-class", "ProviderPermanentError")
    call_command("failed_jobs", "list")

    out = capsys.readouterr().out
    assert "1 failed jobs" in out and "replayed 1 failed jobs" in out and out.rstrip().endswith("0 failed jobs")
    failed_job.refresh_from_db()
    assert failed_job.state == "replayed"
