"""Parsing what clients send: one strict reader of the ids they give us."""

# The largest id anything of ours hands out: Redis INCR counters and bigint primary keys
# stop here, so a larger number cannot name anything and must not reach Redis or SQL.
MAX_ID = 2**63 - 1


def id_parse(text: str) -> int:
    """Read a non-negative integer written in ASCII digits (`"42"`); raise ValueError.

    `str.isdigit()` accepts digits that `int()` refuses (`"²"`), and `int()` accepts what a
    client's id is not (`" 7"`, `"+7"`, `"1_000"`, `"٣"`): every id from a client is read
    here instead, and callers turn the ValueError into their 400.
    """
    if not (text.isascii() and text.isdigit()) or len(text) > len(str(MAX_ID)):
        raise ValueError(f"{text[:40]!r} is not a non-negative integer in ASCII digits")
    number = int(text)
    if number > MAX_ID:
        raise ValueError(f"{text[:40]!r} is larger than {MAX_ID}")
    return number
