"""Request bodies decoded the same way by every view, DRF or plain Django."""

import json
from typing import IO, Any

from django.conf import settings
from rest_framework import parsers
from rest_framework.exceptions import ParseError


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def json_loads(raw: bytes | str) -> Any:
    """Decode a JSON body; raise ValueError for anything that is not strict JSON we can hold.

    The standard decoder recurses once per nesting level, so a few kilobytes of `[[[[…`
    raise RecursionError, not ValueError, and callers catching ValueError would let it
    escape as a 500: too deep is one more kind of bad JSON. NaN and Infinity are refused
    as DRF refuses them (no JSON column can store them).
    """
    try:
        return json.loads(raw, parse_constant=_refuse_constant)
    except RecursionError as exc:
        raise ValueError("it is nested too deeply") from exc


class JSONParser(parsers.JSONParser):
    """DRF's JSON parser on json_loads: every malformed body is a ParseError (400)."""

    def parse(
        self, stream: IO[Any], media_type: str | None = None, parser_context: dict[str, Any] | None = None
    ) -> Any:
        encoding = (parser_context or {}).get("encoding") or settings.DEFAULT_CHARSET
        try:
            return json_loads(stream.read().decode(encoding))
        except ValueError as exc:  # UnicodeDecodeError is a ValueError too
            raise ParseError(f"the body is not valid JSON: {exc}") from exc
