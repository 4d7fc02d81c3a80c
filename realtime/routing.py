"""WebSocket URL routes served by config.asgi."""

from django.urls import URLPattern, path, re_path

from realtime.consumers import NoSuchEndpointConsumer, RealtimeConsumer

websocket_urlpatterns: list[URLPattern] = [
    path("ws/", RealtimeConsumer.as_asgi(), name="realtime-ws"),
    # Last: Channels' router raises on a path it cannot route, which daphne answers with
    # an HTTP 500 to the handshake; this refuses every other path with a close code.
    re_path(r"", NoSuchEndpointConsumer.as_asgi(), name="realtime-ws-not-found"),
]
