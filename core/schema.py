"""The OpenAPI schema's side of the error contract (served at /api/schema/).

Every operation documents its 4xx answers with the one `Error` component, and the few
plain Django views the schema generator cannot see (the SSE stream, Twilio's callback)
register their operation here so that the schema lists every endpoint a client can call.
"""

import re
from typing import Any

from drf_spectacular import openapi
from drf_spectacular.utils import OpenApiResponse
from rest_framework import permissions, serializers


class ErrorSerializer(serializers.Serializer[Any]):
    """The body of every error answer (docs/api.md)."""

    error = serializers.CharField(help_text="a stable snake_case code to switch on; docs/api.md lists them")
    message = serializers.CharField(help_text="what was wrong and how to fix it, for a person")
    detail = serializers.DictField(help_text="more about the error (fields and their problems); {} when none")


def error(description: str) -> OpenApiResponse:
    """An error answer for `@extend_schema(responses=...)`."""
    return OpenApiResponse(ErrorSerializer, description=description)


TOO_MANY_REQUESTS = "too many requests: wait Retry-After seconds (`rate_limited`, docs/operations.md)"


class AutoSchema(openapi.AutoSchema):
    """drf-spectacular's schema, plus the error answers every view can give."""

    def _get_response_bodies(self, direction: Any = "response") -> dict[str, Any]:
        responses: dict[str, Any] = super()._get_response_bodies(direction)
        for status, description in self._error_statuses().items():
            if str(status) not in responses:
                responses[str(status)] = self._get_response_for_code(error(description), str(status), direction=direction)
        return responses

    def _error_statuses(self) -> dict[int, str]:
        statuses: dict[int, str] = {}
        if self.method != "GET":
            statuses[400] = "the body cannot be read or is invalid (`invalid_request`, `detail` per field)"
        if not all(isinstance(p, permissions.AllowAny) for p in self.view.get_permissions()):
            statuses[401] = "no valid credentials (`not_authenticated`, `authentication_failed`)"
            statuses[403] = "these credentials may not do this (`permission_denied`)"
        if "{" in self.path or self._is_list_view():
            # Paths with ids name objects that may not exist; lists answer 404 past the last page.
            statuses[404] = "no such object or page (`not_found`, or the app's own code)"
        # Any request can meet a rate limit: its view's own, or its address's after too
        # many refused credentials (core/throttling.py).
        statuses[429] = TOO_MANY_REQUESTS
        return statuses


# Operations of plain Django views, by path and method, as OpenAPI operation objects.
_PLAIN_VIEW_OPERATIONS: dict[str, dict[str, dict[str, Any]]] = {}

ERROR_CONTENT = {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}


def plain_view_operation(path: str, method: str, operation: dict[str, Any]) -> None:
    """Document an endpoint that is a plain Django view (no DRF view to read it from)."""
    _PLAIN_VIEW_OPERATIONS.setdefault(path, {})[method.lower()] = operation


def add_plain_views(result: dict[str, Any], generator: Any, request: Any, public: bool) -> dict[str, Any]:
    """drf-spectacular postprocessing hook: add the plain views' operations to the schema."""
    for path, operations in _PLAIN_VIEW_OPERATIONS.items():
        for method, operation in operations.items():
            parameters = [
                {"name": name, "in": "path", "required": True, "schema": {"type": "integer"}}
                for name in re.findall(r"{(\w+)}", path)
            ]
            responses = {"429": {"description": TOO_MANY_REQUESTS, "content": ERROR_CONTENT},
                         **operation.get("responses", {})}
            result["paths"].setdefault(path, {})[method] = {
                **operation,
                "parameters": parameters + operation.get("parameters", []),
                "responses": responses,
            }
    return result

