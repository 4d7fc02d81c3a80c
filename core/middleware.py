"""Every answer under /api/ (and of the SSE stream) is JSON, whatever part of Django gives
it; a database out of reach is a 503 to retry, on every path."""

import logging
from collections.abc import Awaitable, Callable

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.http import HttpRequest, HttpResponse
from django.http.response import HttpResponseBase
from django.urls import is_valid_path

from core.errors import DATABASE_UNREACHABLE, error_response, http_error_response

# The paths the OpenAPI schema documents: /events/ is the SSE stream, JSON when it refuses.
API_PREFIXES = ("/api/", "/events/")
DATABASE_RETRY_AFTER_SECONDS = 5

logger = logging.getLogger(__name__)

GetResponse = Callable[[HttpRequest], HttpResponseBase | Awaitable[HttpResponseBase]]


def _missing_slash(request: HttpRequest) -> HttpResponseBase | None:
    """A 404 naming the right URL when an API URL is asked for without its trailing slash.

    Django's APPEND_SLASH would redirect instead, and a client following the redirect
    turns POST into GET (under DEBUG, Django raises a 500 rather than lose the body).
    """
    path = request.path_info
    if path.endswith("/"):
        return None
    urlconf = getattr(request, "urlconf", None)
    if is_valid_path(path, urlconf) or not is_valid_path(f"{path}/", urlconf):
        return None
    return error_response(
        "not_found",
        f"no API URL {request.path}: API URLs end with a slash, use {request.path}/",
        detail={"url": f"{request.path}/"},
        status=404,
    )


class ApiErrorMiddleware:
    """Answer the error body for API errors that no view rendered as one.

    Sits above CommonMiddleware, so a slashless API URL is answered here before
    APPEND_SLASH can redirect it. Sync and async alike: the work is pure, and an async
    request (SSE, daphne) should not hop to a thread for it.
    """

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: GetResponse) -> None:
        self.get_response = get_response
        self.is_async = iscoroutinefunction(get_response)
        if self.is_async:
            markcoroutinefunction(self)

    def __call__(self, request: HttpRequest) -> HttpResponseBase | Awaitable[HttpResponseBase]:
        if self.is_async:
            return self.__acall__(request)
        if not request.path_info.startswith(API_PREFIXES):
            return self.get_response(request)  # type: ignore[return-value]
        response = _missing_slash(request) or self.get_response(request)
        return http_error_response(request, response)  # type: ignore[arg-type]

    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponseBase | None:
        """A database out of reach (down, restarting, or out of connections) is a moment's
        unavailability the client may retry, not an unexpected error: 503 with Retry-After,
        the error body under the API, plain text on pages (the admin, the live page)."""
        if not isinstance(exception, DATABASE_UNREACHABLE):
            return None
        logger.warning("%s %s: database unreachable: %s", request.method, request.path_info, exception)
        message = "the service cannot reach its database just now; retry in a few seconds"
        headers = {"Retry-After": str(DATABASE_RETRY_AFTER_SECONDS)}
        if not request.path_info.startswith(API_PREFIXES):
            return HttpResponse(message.capitalize() + ".", status=503, headers=headers,
                                content_type="text/plain; charset=utf-8")
        return error_response("unavailable", message, status=503, headers=headers)

    async def __acall__(self, request: HttpRequest) -> HttpResponseBase:
        if not request.path_info.startswith(API_PREFIXES):
            return await self.get_response(request)  # type: ignore[misc]
        response = _missing_slash(request) or await self.get_response(request)  # type: ignore[misc]
        return http_error_response(request, response)
