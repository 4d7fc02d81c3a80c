"""The OpenAPI schema (/api/schema/) documents the error contract and every endpoint."""

import re
from typing import Any

import pytest
import yaml
from django.core.management import call_command
from django.test import Client

from core.errors import ApplicationError, status_code_name
from notifications.events import event_types
from tests.processes import ROOT

pytestmark = pytest.mark.django_db

ERROR_REF = "#/components/schemas/Error"


@pytest.fixture(scope="module")
def schema() -> dict[str, Any]:
    return yaml.safe_load(Client().get("/api/schema/").content)


def test_the_schema_generates_without_a_warning(tmp_path: Any) -> None:
    call_command("spectacular", "--validate", "--fail-on-warn", "--file", str(tmp_path / "schema.yaml"))


def test_the_error_component_is_the_documented_body(schema: dict[str, Any]) -> None:
    component = schema["components"]["schemas"]["Error"]

    assert set(component["properties"]) == set(component["required"]) == {"error", "message", "detail"}
    assert component["properties"]["detail"]["type"] == "object"
    assert '{"error": code, "message": text, "detail": object}' in _api_doc()


def test_every_operation_documents_its_errors_with_the_error_body(schema: dict[str, Any]) -> None:
    undocumented = [
        f"{method.upper()} {path} {status}"
        for path, operations in schema["paths"].items()
        for method, operation in operations.items()
        for status, response in operation["responses"].items()
        if status.startswith("4") and response["content"]["application/json"]["schema"] != {"$ref": ERROR_REF}
    ]
    refusing = [
        f"{method.upper()} {path}"
        for path, operations in schema["paths"].items()
        for method, operation in operations.items()
        if not any(status.startswith("4") for status in operation["responses"])
    ]

    assert undocumented == [] and refusing == []


def test_plain_views_webhooks_presence_and_event_types_are_documented(schema: dict[str, Any]) -> None:
    paths = schema["paths"]
    presence = {p["name"]: p for p in paths["/api/presence/"]["get"]["parameters"]}
    publish = schema["components"]["schemas"]["EventPublish"]["properties"]["type"]
    [enum_ref] = [part["$ref"] for part in publish.get("allOf", [publish]) if "$ref" in part]
    type_enum = schema["components"]["schemas"][enum_ref.rsplit("/", 1)[1]]

    assert "text/event-stream" in paths["/events/"]["get"]["responses"]["200"]["content"]
    assert "post" in paths["/api/webhooks/twilio/{delivery_id}/"]
    assert "post" in paths["/api/webhooks/chat/"]
    assert presence["users"]["required"] and presence["users"]["in"] == "query"
    assert type_enum["enum"] == sorted({event_type.name for event_type in event_types()})


def _api_doc() -> str:
    return (ROOT / "docs" / "api.md").read_text()


def test_every_error_code_carillon_answers_is_documented() -> None:
    documented = set(re.findall(r"^\| `([a-z_]+)` \|", _api_doc(), flags=re.MULTILINE))
    raised = {cls.code for cls in _subclasses(ApplicationError)}
    generic = {status_code_name(status) for status in range(400, 600)}
    literal: set[str] = set()
    for module in ("notifications", "rooms", "realtime", "config", "core"):
        for source in (ROOT / module).rglob("*.py"):
            literal |= set(re.findall(r'error_response\(\s*"([a-z_]+)"', source.read_text()))

    assert raised | generic | literal <= documented, sorted((raised | generic | literal) - documented)


def _subclasses(cls: type[ApplicationError]) -> list[type[ApplicationError]]:
    return [cls, *(sub for child in cls.__subclasses__() for sub in _subclasses(child))]
