"""Every HTML page carries the Content-Security-Policy, and none needs an inline script."""

import re
from typing import Any

import pytest
from django.conf import settings
from django.test import Client

pytestmark = pytest.mark.django_db

# An executable <script> without src: the policy (script-src 'self') would block it.
INLINE_SCRIPT = re.compile(r"<script(?![^>]*\bsrc=)(?![^>]*application/json)[^>]*>", re.IGNORECASE)
SIGNED_IN_PAGES = ["/", "/live/", "/admin/", "/admin/notifications/failedjob/", "/api/docs/"]
LOGIN_PAGES = ["/live/login/", "/admin/login/"]


@pytest.fixture
def staff(django_user_model: Any) -> Client:
    client = Client()
    client.force_login(django_user_model.objects.create_superuser("root", password="pw-root-123"))
    return client


@pytest.mark.parametrize("path", SIGNED_IN_PAGES + LOGIN_PAGES)
def test_a_page_carries_the_policy_and_runs_no_inline_script(staff: Client, path: str) -> None:
    response = (Client() if path in LOGIN_PAGES else staff).get(path)

    assert response.status_code == 200, path
    assert response["Content-Security-Policy"] == settings.CARILLON_CONTENT_SECURITY_POLICY
    assert "script-src 'self';" in response["Content-Security-Policy"]
    assert INLINE_SCRIPT.findall(response.content.decode()) == []


def test_json_answers_carry_no_policy(staff: Client) -> None:
    assert "Content-Security-Policy" not in staff.get("/api/notifications/")
