"""Twilio's official client, optionally aimed at another base URL (the provider sandbox)."""

from typing import Any

from django.conf import settings
from twilio.http.http_client import TwilioHttpClient
from twilio.http.response import Response
from twilio.rest import Client

TWILIO_API_ORIGIN = "https://api.twilio.com"


class RebasedTwilioHttpClient(TwilioHttpClient):
    """Send what the client addresses to api.twilio.com to `base_url` instead.

    The twilio library has no base-URL option (only edge and region), and the sandbox
    speaks the same REST API, so rewriting the origin is the whole difference.
    """

    def __init__(self, base_url: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.base_url = base_url.rstrip("/")

    def request(self, method: str, url: str, *args: Any, **kwargs: Any) -> Response:
        if url.startswith(TWILIO_API_ORIGIN):
            url = self.base_url + url[len(TWILIO_API_ORIGIN) :]
        return super().request(method, url, *args, **kwargs)


def twilio_client(*, timeout: float = 10.0) -> Client:
    """Build a Twilio client from settings (TWILIO_ACCOUNT_SID, _AUTH_TOKEN, _API_BASE_URL)."""
    http_client: TwilioHttpClient
    if settings.TWILIO_API_BASE_URL:
        http_client = RebasedTwilioHttpClient(settings.TWILIO_API_BASE_URL, timeout=timeout)
    else:
        http_client = TwilioHttpClient(timeout=timeout)
    return Client(
        settings.TWILIO_ACCOUNT_SID, settings.TWILIO_AUTH_TOKEN, http_client=http_client
    )
