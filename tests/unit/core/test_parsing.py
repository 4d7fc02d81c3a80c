"""The one reader of ids that clients send."""

import pytest

from core.parsing import MAX_ID, id_parse


@pytest.mark.parametrize(("text", "number"), [("0", 0), ("42", 42), ("007", 7), (str(MAX_ID), MAX_ID)])
def test_ascii_digits_are_an_id(text: str, number: int) -> None:
    assert id_parse(text) == number


@pytest.mark.parametrize(
    "text",
    ["", "\u00b2", "\u0663", "\uff11", "-1", "+1", " 7", "7 ", "1_000", "1e3", "0x10", str(MAX_ID + 1), "9" * 400],
)
def test_anything_else_is_a_value_error_not_a_crash(text: str) -> None:
    with pytest.raises(ValueError, match="."):
        id_parse(text)
