"""The one error contract of every HTTP answer Carillon gives to a program.

Every error body is `{"error": code, "message": human text, "detail": object}`: `error` is a
stable snake_case code clients switch on, `message` says what was wrong and how to fix it,
`detail` is always an object (empty when there is nothing more to say). Plain Django views
and DRF views answer through `error_response`, so the shape is built in one place.
"""

import logging
from typing import Any

from django.core.exceptions import PermissionDenied
from django.http import Http404, JsonResponse
from rest_framework import exceptions
from rest_framework.views import exception_handler

logger = logging.getLogger(__name__)


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


# DRF's codes, renamed where Carillon documents another word for the same thing.
_DRF_CODES = {
    "parse_error": "invalid_request",
    "invalid": "invalid_request",
    "error": "invalid_request",
}


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
        return None
    headers = {name: response[name] for name in ("WWW-Authenticate", "Retry-After", "Allow") if name in response}
    if isinstance(exc, exceptions.ValidationError):
        fields = ", ".join(map(str, response.data)) if isinstance(response.data, dict) else ""
        message = f"invalid {fields}" if fields else "invalid request"
        return error_response(
            "invalid_request", message, detail=response.data, status=response.status_code, headers=headers
        )
    code = exc.get_codes() if isinstance(exc, exceptions.APIException) else None
    code = code if isinstance(code, str) else "error"
    return error_response(
        _DRF_CODES.get(code, code), str(getattr(exc, "detail", exc)), status=response.status_code, headers=headers
    )
