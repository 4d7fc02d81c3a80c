"""HTTP routes of the realtime app, included by config.urls."""

from django.urls import URLPattern, path

from realtime import api, sse

urlpatterns: list[URLPattern] = [
    path("events/", sse.events, name="realtime-events"),
    path("api/realtime/token", api.TokenView.as_view(), name="realtime-token"),
    path("api/realtime/publish", api.PublishView.as_view(), name="realtime-publish"),
]
