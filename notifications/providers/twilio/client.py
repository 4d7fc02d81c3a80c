"""Twilio's official client, optionally aimed at another base URL (the provider sandbox),
keeping what its exceptions leave out: how long a 429 asks us to wait."""

from typing import Any

from django.conf import settings
from twilio.http.http_client import TwilioHttpClient
from twilio.http.response import Response
from twilio.rest import Client

from notifications.providers.base import retry_after_seconds

TWILIO_API_ORIGIN = "https://api.twilio.com"


class CarillonTwilioHttpClient(TwilioHttpClient):
    """Twilio's HTTP client with two additions.

    - `base_url`: send what the client addresses to api.twilio.com there instead. The
      twilio library has no base-URL option (only edge and region), and the sandbox
      speaks the same REST API, so rewriting the origin is the whole difference.
    - `retry_after`: the seconds the last answer's Retry-After header asked for (None
      without one). TwilioRestException carries the status and body but not the headers.
    """

    def __init__(self, base_url: str = "", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.base_url = base_url.rstrip("/")
        self.retry_after: float | None = None

    def request(self, method: str, url: str, *args: Any, **kwargs: Any) -> Response:
        if self.base_url and url.startswith(TWILIO_API_ORIGIN):
            url = self.base_url + url[len(TWILIO_API_ORIGIN) :]
        response = super().request(method, url, *args, **kwargs)
        self.retry_after = retry_after_seconds((response.headers or {}).get("Retry-After"))
        return response


def twilio_client(*, timeout: float = 10.0) -> Client:
    """Build a Twilio client from settings (TWILIO_ACCOUNT_SID, _AUTH_TOKEN, _API_BASE_URL);
    its `http_client` is a CarillonTwilioHttpClient."""
    http_client = CarillonTwilioHttpClient(settings.TWILIO_API_BASE_URL or "", timeout=timeout)
    return Client(settings.TWILIO_ACCOUNT_SID, settings.TWILIO_AUTH_TOKEN, http_client=http_client)
