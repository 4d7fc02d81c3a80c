"""daphne's HTTP server (Twisted) without its own parsing of form bodies.

Twisted parses the body of every form POST (urlencoded or multipart) into `request.args`
before daphne sees the request, on the reactor thread that every connection of the
process shares, with the email package. daphne never reads `args`: it hands the raw body
to the application, which parses what it accepts. So the parse was pure cost: its
Content-Type parse alone was 13 % of a daphne's CPU under chat webhooks (py-spy); one
32 MB multipart body held the reactor, and every WebSocket and stream on it, for 8.6 s;
and a malformed multipart body got Twisted's bare 400 instead of the API's error body.
Twisted has a switch for it (`parsePOSTFormSubmission`); daphne builds its requests
without passing it, so the request class daphne's factory uses is replaced by one that
does.
"""

import inspect
from typing import Any

from daphne import http_protocol
from twisted.web import http


class _UnparsedBodyRequest(http_protocol.WebRequest):  # type: ignore[misc]
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, parsePOSTFormSubmission=False, **kwargs)


def form_parsing_off() -> None:
    """Make every request daphne builds from now on skip Twisted's form parsing."""
    if "parsePOSTFormSubmission" not in inspect.signature(http.Request.__init__).parameters:
        # A Twisted without the switch: refuse to start rather than serve with the stall.
        raise RuntimeError("twisted.web.http.Request takes no parsePOSTFormSubmission: see config/daphne.py")
    # daphne's HTTPFactory reads this module attribute for each connection it builds.
    http_protocol.WebRequest = _UnparsedBodyRequest
