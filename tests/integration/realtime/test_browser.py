"""The /live/ page in headless Chromium: notifications from the real pipeline arrive live,
and what was created while the page's daphne was down arrives after it returns."""

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from playwright.sync_api import Page, expect, sync_playwright

from notifications.services.events import event_publish
from tests.integration.browser import WAIT_MS, chromium_launch, csp_violations
from tests.integration.conftest import start_daphne
from tests.processes import ManagedProcess, free_port, processes_stop

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]



def test_a_logged_in_user_sees_notifications_live_and_what_was_missed_after_a_restart(
    pipeline_worker: ManagedProcess,  # the in-app channel creates Notifications and pushes them
) -> None:
    user = get_user_model().objects.create_user("grace", "grace@example.com", "pw-grace-123")
    # Playwright's sync API runs an event loop in its thread, where Django refuses the ORM:
    # the browser gets a thread of its own and the ORM stays here, reached through `orm`.
    with ThreadPoolExecutor(1) as browser_thread, ThreadPoolExecutor(1) as orm_thread:

        def publish(type: str, **data: Any) -> None:
            orm_thread.submit(event_publish, type=type, data={"user_id": user.pk, **data}).result()

        browser_thread.submit(browse, publish).result()


def browse(publish: Callable[..., None]) -> None:
    port = free_port()
    processes: list[ManagedProcess] = []
    try:
        process, url = start_daphne("daphne-browser", port=port)
        processes.append(process)
        with sync_playwright() as playwright:
            browser = chromium_launch(playwright)
            page = browser.new_page()
            blocked = csp_violations(page)
            log_in_and_see_live(page, url, publish)

            process.stop()
            expect(page.locator("#state")).to_have_text("reconnecting", timeout=WAIT_MS)
            publish("video.liked", video_id="v1", liked_by="Linus")
            process, _ = start_daphne("daphne-browser-2", port=port)
            processes.append(process)

            expect(page.locator("#notifications")).to_contain_text(
                "Linus liked your video", timeout=WAIT_MS
            )
            expect(page.locator("#unread")).to_have_text("2")
            expect(page.locator("#state")).to_have_text("live")
            expect(page.locator("#notifications li")).to_have_count(2)

            page.click("#mark-read")
            expect(page.locator("#unread")).to_have_text("0", timeout=WAIT_MS)
            page.reload()  # the inbox API agrees: marked read on the server, not just the page
            expect(page.locator("#state")).to_have_text("live", timeout=WAIT_MS)
            expect(page.locator("#notifications li")).to_have_count(2, timeout=WAIT_MS)
            expect(page.locator("#unread")).to_have_text("0")
            assert blocked == []  # the Content-Security-Policy let the page do all of it
            browser.close()
    finally:
        processes_stop(processes)


def log_in_and_see_live(page: Page, url: str, publish: Callable[..., None]) -> None:
    login = page.goto(f"{url}/live/?room=browser")
    assert login is not None and "script-src 'self'" in login.headers["content-security-policy"]
    page.fill("#id_username", "grace")
    page.fill("#id_password", "pw-grace-123")
    page.click("#login")
    expect(page.locator("#state")).to_have_text("live", timeout=WAIT_MS)

    publish("account.created", name="Grace")
    expect(page.locator("#notifications")).to_contain_text("Welcome aboard", timeout=WAIT_MS)
    expect(page.locator("#unread")).to_have_text("1")
    page.click("#like")
    expect(page.locator("#feed")).to_contain_text("video.liked", timeout=WAIT_MS)
    expect(page.locator("#likes")).to_have_text("1")
