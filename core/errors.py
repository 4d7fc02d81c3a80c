"""Errors every app shares: the one error contract of every HTTP answer Carillon gives to
a program, and the errors a third-party provider's client raises.

Every error body is `{"error": code, "message": human text, "detail": object}`: `error` is a
stable snake_case code clients switch on, `message` says what was wrong and how to fix it,
`detail` is always an object (empty when there is nothing more to say). Plain Django views
and DRF views answer through `error_response`, so the shape is built in one place.
"""

import logging
from typing import Any

from django.core.exceptions import PermissionDenied
from django.db import InterfaceError, OperationalError
from django.http import Http404, HttpRequest, JsonResponse
from django.http.response import HttpResponseBase
from rest_framework import exceptions
from rest_framework.settings import api_settings
from rest_framework.views import exception_handler

logger = logging.getLogger(__name__)

# The database's errors of the moment (unreachable, restarting, out of connections, a lock
# held too long): the same request, task or pass a few seconds later may succeed.
DATABASE_UNREACHABLE = (OperationalError, InterfaceError)


class ApplicationError(Exception):
    """An error a caller caused and can fix: rendered as the error body with `status`."""

    code = "invalid_request"
    status = 400

    def __init__(
        self, message: str, *, detail: Any = None, code: str | None = None, status: int | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.detail = detail
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status



class IdempotencyKeyReusedError(ApplicationError):
    """A key this caller already used for a different request: like Stripe, refuse rather
    than answer the first request's result for a request that is not the same."""

    code = "idempotency_key_reused"
    status = 409


# Provider errors are defined here, once, because every app that hands messages to a third
# party (notifications' channels, rooms' chat platform) retries on the same two kinds.
# They are not ApplicationErrors: the caller did nothing wrong, and a task, not an HTTP
# answer, decides what happens next.


class ProviderError(Exception):
    """A provider did not take a message; `response` keeps what it answered, for the trail."""

    def __init__(self, message: str, *, response: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.response = response or {}


class ProviderTransientError(ProviderError):
    """Worth retrying: the provider was down, slow, rate limiting, or answered 5xx.

    `in_doubt` says the provider may have taken the message anyway (a timeout after the
    request was sent); the next attempt must then check before sending again.
    `retry_after` (seconds) says the provider asked every sender to slow down (HTTP 429).
    """

    def __init__(
        self, message: str, *, in_doubt: bool = False, response: dict[str, Any] | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message, response=response)
        self.in_doubt = in_doubt
        self.retry_after = retry_after


class ProviderPermanentError(ProviderError):
    """Not worth retrying: the provider refused the message itself (4xx, bad number, ...)."""


def error_body(code: str, message: str, detail: Any = None) -> dict[str, Any]:
    """The error body; `detail` is an object, never null."""
    if detail is None:
        detail = {}
    elif not isinstance(detail, dict):
        detail = {"errors": detail}
    return {"error": code, "message": message, "detail": detail}


def error_response(
    code: str, message: str, *, detail: Any = None, status: int = 400, headers: dict[str, str] | None = None
) -> JsonResponse:
    """Answer the error body with `status` (and headers such as Retry-After)."""
    response = JsonResponse(error_body(code, message, detail), status=status)
    for name, value in (headers or {}).items():
        response[name] = value
    return response


def application_error_response(exc: ApplicationError) -> JsonResponse:
    return error_response(exc.code, exc.message, detail=exc.detail, status=exc.status)


# The code of an answer that carries no code of its own: DRF exceptions whose default
# code is not one Carillon documents, and the responses Django gives before or around a
# view (unknown URL, wrong method, unreadable body, unexpected failure).
_STATUS_CODES = {
    400: "invalid_request",
    401: "not_authenticated",
    403: "permission_denied",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    413: "payload_too_large",
    415: "unsupported_media_type",
    429: "rate_limited",
}
# DRF's codes, renamed where Carillon documents another word for the same thing.
_DRF_CODES = {"parse_error": "invalid_request", "invalid": "invalid_request", "throttled": "rate_limited"}


def status_code_name(status: int) -> str:
    """The error code of an answer with this HTTP status and no code of its own."""
    if status >= 500:
        return "internal_error"
    return _STATUS_CODES.get(status, "invalid_request")


def _field_path(path: str, key: object) -> str:
    if key == api_settings.NON_FIELD_ERRORS_KEY:
        return path
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else str(key)


def validation_problems(errors: Any, path: str = "") -> list[str]:
    """Each message of DRF validation errors with where it applies: `[0].channel: ...`.

    Errors nest as the data does: dicts by field name, by list index for a list field
    (int keys), lists of messages per field, and lists of dicts for `many=True`.
    """
    if isinstance(errors, dict):
        return [problem for key, value in errors.items() for problem in validation_problems(value, _field_path(path, key))]
    if isinstance(errors, list) and not all(isinstance(item, str) for item in errors):
        return [problem for index, item in enumerate(errors) for problem in validation_problems(item, f"{path}[{index}]")]
    messages = errors if isinstance(errors, list) else [errors]
    return [f"{path}: {message}" if path else str(message) for message in messages]


def _method_not_allowed_message(method: str, allowed: str) -> str:
    return f"{method} is not allowed on this URL: use {allowed}"


def api_exception_handler(exc: Exception, context: dict[str, Any]) -> JsonResponse | None:
    """DRF's exception handler, answering Carillon's error body for every API error."""
    if isinstance(exc, ApplicationError):
        return application_error_response(exc)
    if isinstance(exc, Http404):
        exc = exceptions.NotFound()
    elif isinstance(exc, PermissionDenied):
        exc = exceptions.PermissionDenied()
    response = exception_handler(exc, context)
    if response is None:
        return None  # not an API error: Django's 500, rendered by ApiErrorMiddleware
    headers = {name: response[name] for name in ("WWW-Authenticate", "Retry-After") if name in response}
    if isinstance(exc, exceptions.ValidationError):
        problems = validation_problems(response.data)
        message = "invalid request: " + "; ".join(problems[:5]) if problems else "invalid request"
        return error_response(
            "invalid_request", message, detail=response.data, status=response.status_code, headers=headers
        )
    if isinstance(exc, exceptions.MethodNotAllowed) and "view" in context:
        allowed = ", ".join(context["view"].allowed_methods)
        return error_response(
            "method_not_allowed",
            _method_not_allowed_message(context["request"].method, allowed),
            status=405,
            headers={"Allow": allowed},
        )
    code = exc.get_codes() if isinstance(exc, exceptions.APIException) else None
    code = _DRF_CODES.get(code, code) if isinstance(code, str) and code != "error" else status_code_name(response.status_code)
    return error_response(code, str(getattr(exc, "detail", exc)), status=response.status_code, headers=headers)


def http_error_response(request: HttpRequest, response: HttpResponseBase) -> HttpResponseBase:
    """`response` as the error body when it is an error in another shape (or none).

    Django answers some errors before or around any view: an HTML 404 for an unknown URL,
    an empty 405 from `require_POST`, a bare 400 for a body it cannot read, its 500 page
    (with the exception text under DEBUG). The status is kept; the exception text never
    reaches the client (Django has already logged it).
    """
    if response.status_code < 400 or response.get("Content-Type", "").startswith("application/json"):
        return response
    status = response.status_code
    code = status_code_name(status)
    headers = {name: response[name] for name in ("Allow", "WWW-Authenticate", "Retry-After") if name in response}
    if status == 404:
        message = f"no API URL {request.path}: the URLs are listed at /api/docs/"
    elif status == 405:
        message = _method_not_allowed_message(request.method or "", response.get("Allow", ""))
    elif status == 400:
        message = "the request could not be read: check its Content-Type header and its body"
    elif status >= 500:
        message = "an unexpected error occurred; it has been logged, and retrying may help"
    else:
        message = response.reason_phrase
    return error_response(code, message, status=status, headers=headers)
