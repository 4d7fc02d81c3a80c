"""WebSocket URL routes served by config.asgi."""

from django.urls import URLPattern, path

from realtime.consumers import RealtimeConsumer

websocket_urlpatterns: list[URLPattern] = [
    path("ws/", RealtimeConsumer.as_asgi(), name="realtime-ws"),
]
