"""The operator's replay flow in the Django admin, in headless Chromium, against the real
pipeline: a failed SMS is found by filter, replayed after a confirmation page, and sent once."""

from concurrent.futures import ThreadPoolExecutor

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from playwright.sync_api import Page, expect, sync_playwright

from notifications.models import FailedJob, FailedJobAction
from notifications.services.events import event_publish
from sandbox.client import SandboxClient
from tests.integration.browser import WAIT_MS, chromium_launch, csp_violations
from tests.integration.test_pipeline import RESET_URL, make_user, statuses
from tests.processes import ManagedProcess, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


def make_staff(username: str, *permissions: str) -> None:
    user = get_user_model().objects.create_user(username, password=f"pw-{username}-123", is_staff=True)
    user.user_permissions.set(Permission.objects.filter(codename__in=permissions))


def test_an_operator_replays_a_failed_sms_from_the_admin_and_it_is_sent_once(
    pipeline_worker: ManagedProcess,
    sandbox: SandboxClient,
    daphne_url: str,
) -> None:
    make_staff("operator", "view_failedjob", "change_failedjob", "replay_failedjob")
    make_staff("viewer", "view_failedjob", "change_failedjob")
    sandbox.set_knobs("sms", fail_next=1, error_status=400)  # Twilio refuses it once: permanent
    user = make_user()
    event = event_publish(type="password.reset_requested", data={"user_id": user.pk, "reset_url": RESET_URL})
    failed = wait_for(lambda: FailedJob.objects.filter(event=event).first(), "a failed job")
    assert sandbox.received("sms") == []

    with ThreadPoolExecutor(1) as browser_thread:  # Playwright's loop keeps the ORM out
        browser_thread.submit(replay_in_the_admin, daphne_url).result()

    wait_for(lambda: statuses(event).get("security_sms") == "delivered", "sms delivered after the replay")
    [sms] = sandbox.received("sms")
    assert RESET_URL in sms["body"]
    failed.refresh_from_db()
    assert failed.state == FailedJob.State.REPLAYED
    [action] = FailedJobAction.objects.filter(failed_job=failed)
    assert action.kind == "replay" and action.user is not None and action.user.username == "operator"


def replay_in_the_admin(url: str) -> None:
    with sync_playwright() as playwright:
        browser = chromium_launch(playwright)
        try:
            viewer = browser.new_page()
            blocked = csp_violations(viewer)
            log_in(viewer, url, "viewer")
            viewer.goto(f"{url}/admin/notifications/failedjob/")
            expect(viewer.locator("select[name=action] option")).not_to_contain_text(["Replay selected failed jobs"])

            page = browser.new_page()
            blocked += csp_violations(page)
            log_in(page, url, "operator")
            page.goto(f"{url}/admin/notifications/failedjob/?queue=carillon.sms")
            expect(page.locator("#result_list tbody tr")).to_have_count(1)
            page.locator("#result_list tbody input.action-select").check()
            page.select_option("select[name=action]", "replay_selected")
            page.click("button[name=index]")

            expect(page.locator("#content")).to_contain_text("Replay 1 failed job?", timeout=WAIT_MS)
            page.click("input[type=submit][value='Yes, replay 1']")
            expect(page.locator(".messagelist")).to_contain_text("Replayed 1 failed jobs.", timeout=WAIT_MS)
            assert blocked == []  # the admin works whole under the Content-Security-Policy
        finally:
            browser.close()


def test_the_api_docs_render_under_the_content_security_policy(daphne_url: str) -> None:
    with ThreadPoolExecutor(1) as browser_thread:
        browser_thread.submit(read_the_api_docs, daphne_url).result()


def read_the_api_docs(url: str) -> None:
    with sync_playwright() as playwright:
        browser = chromium_launch(playwright)
        try:
            page = browser.new_page()
            blocked = csp_violations(page)
            response = page.goto(f"{url}/api/docs/")
            assert response is not None and "script-src 'self'" in response.headers["content-security-policy"]
            page.wait_for_load_state("networkidle")
            assert blocked == []
            expect(page.locator(".swagger-ui .info")).to_contain_text("Carillon API", timeout=WAIT_MS)
            expect(page.locator(".opblock-summary-path").first).to_be_visible(timeout=WAIT_MS)
        finally:
            browser.close()


def log_in(page: Page, url: str, username: str) -> None:
    login = page.goto(f"{url}/admin/login/?next=/admin/")
    assert login is not None and "script-src 'self'" in login.headers["content-security-policy"]
    page.fill("#id_username", username)
    page.fill("#id_password", f"pw-{username}-123")
    page.click("input[type=submit]")
    expect(page.locator("#user-tools")).to_contain_text(username.upper(), timeout=WAIT_MS, ignore_case=True)
