"""API conventions shared by every app: errors answer {"error", "message", "detail"}."""

from typing import Any

from rest_framework import exceptions
from rest_framework.response import Response
from rest_framework.views import exception_handler


def api_error(code: str, message: str, *, detail: Any = None, status_code: int = 400) -> Response:
    """The one shape of an API error: a stable code, a human message, and details."""
    return Response({"error": code, "message": message, "detail": detail or {}}, status=status_code)


def api_exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    """DRF's handler, reshaped to Carillon's error body."""
    response = exception_handler(exc, context)
    if response is None:
        return None
    if isinstance(exc, exceptions.ValidationError):
        fields = ", ".join(response.data) if isinstance(response.data, dict) else ""
        message = f"invalid {fields}" if fields else "invalid request"
        return api_error("invalid_request", message, detail=response.data, status_code=response.status_code)
    code = getattr(exc, "default_code", "error")
    message = str(getattr(exc, "detail", exc))
    reshaped = api_error(code, message, status_code=response.status_code)
    for header in ("WWW-Authenticate", "Retry-After", "Allow"):
        if header in response:
            reshaped[header] = response[header]
    return reshaped


