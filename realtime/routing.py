"""WebSocket URL routes served by config.asgi. Consumers arrive with the realtime issue."""

from django.urls import URLPattern

websocket_urlpatterns: list[URLPattern] = []
