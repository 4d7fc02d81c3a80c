"""Headless Chromium for browser tests: Debian's binary driven by Playwright.

`playwright install` cannot download here, so Playwright is pointed at /usr/bin/chromium;
without the background-networking flag Chromium keeps trying to reach Google's hosts.
"""

from playwright.sync_api import Browser, Page, Playwright

CHROMIUM = "/usr/bin/chromium"
WAIT_MS = 20_000


def chromium_launch(playwright: Playwright) -> Browser:
    return playwright.chromium.launch(
        executable_path=CHROMIUM,
        args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"],
    )


def csp_violations(page: Page) -> list[str]:
    """Collect what the Content-Security-Policy blocks on `page` (Chromium says so on its console)."""
    violations: list[str] = []
    page.on("console", lambda message: violations.append(message.text) if "Content Security Policy" in message.text else None)
    return violations
