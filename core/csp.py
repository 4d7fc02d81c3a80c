"""Content-Security-Policy on every HTML page Carillon serves (Django 5.2 has none built in)."""

from collections.abc import Callable
from typing import Any

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.conf import settings
from django.http import HttpRequest, HttpResponse


def _with_policy(response: HttpResponse) -> HttpResponse:
    # Only pages: JSON, event streams and static files run no script a policy could stop.
    if response.get("Content-Type", "").startswith("text/html") and settings.CARILLON_CONTENT_SECURITY_POLICY:
        response.headers.setdefault("Content-Security-Policy", settings.CARILLON_CONTENT_SECURITY_POLICY)
    return response


class ContentSecurityPolicyMiddleware:
    """Add CARILLON_CONTENT_SECURITY_POLICY to HTML responses that do not set their own."""

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Callable[[HttpRequest], Any]) -> None:
        self.get_response = get_response
        if iscoroutinefunction(get_response):
            markcoroutinefunction(self)

    def __call__(self, request: HttpRequest) -> Any:
        if iscoroutinefunction(self):
            return self.__acall__(request)
        return _with_policy(self.get_response(request))

    async def __acall__(self, request: HttpRequest) -> HttpResponse:
        return _with_policy(await self.get_response(request))
