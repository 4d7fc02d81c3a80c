"""The /live/ page in headless Chromium: live arrival, and resume across a daphne restart."""

from concurrent.futures import ThreadPoolExecutor

import pytest
from django.contrib.auth import get_user_model
from playwright.sync_api import Page, expect, sync_playwright

from realtime.services import realtime_publish
from tests.integration.conftest import start_daphne
from tests.processes import ManagedProcess, free_port

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

CHROMIUM = "/usr/bin/chromium"  # Debian's; `playwright install` cannot download here
WAIT_MS = 20_000


def test_a_logged_in_user_sees_notifications_live_and_what_was_missed_after_a_restart() -> None:
    user = get_user_model().objects.create_user("grace", password="pw-grace-123")
    # Playwright's sync API runs an event loop in its thread, where Django refuses the ORM:
    # the browser gets a thread of its own.
    with ThreadPoolExecutor(1) as pool:
        pool.submit(browse, f"user:{user.pk}").result()


def browse(user_topic: str) -> None:
    port = free_port()
    processes: list[ManagedProcess] = []
    try:
        process, url = start_daphne("daphne-browser", port=port)
        processes.append(process)
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(
                executable_path=CHROMIUM,
                args=[
                    "--headless",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-background-networking",
                ],
            )
            page = browser.new_page()
            log_in_and_see_live(page, url, user_topic)

            process.stop()
            expect(page.locator("#state")).to_have_text("reconnecting", timeout=WAIT_MS)
            realtime_publish(
                topic=user_topic, event="notification.created", data={"text": "while down"}
            )
            process, _ = start_daphne("daphne-browser-2", port=port)
            processes.append(process)

            expect(page.locator("#notifications")).to_contain_text("while down", timeout=WAIT_MS)
            expect(page.locator("#unread")).to_have_text("2")
            expect(page.locator("#state")).to_have_text("live")
            browser.close()
    finally:
        for process in processes:
            process.stop()


def log_in_and_see_live(page: Page, url: str, user_topic: str) -> None:
    page.goto(f"{url}/live/?room=browser")
    page.fill("#id_username", "grace")
    page.fill("#id_password", "pw-grace-123")
    page.click("#login")
    expect(page.locator("#state")).to_have_text("live", timeout=WAIT_MS)

    realtime_publish(topic=user_topic, event="notification.created", data={"text": "hello"})
    expect(page.locator("#notifications")).to_contain_text("hello", timeout=WAIT_MS)
    expect(page.locator("#unread")).to_have_text("1")
    page.click("#like")
    expect(page.locator("#feed")).to_contain_text("video.liked", timeout=WAIT_MS)
    expect(page.locator("#likes")).to_have_text("1")
