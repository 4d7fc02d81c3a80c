"""HTTP routes of the realtime app, included by config.urls."""

from django.contrib.auth.views import LoginView
from django.urls import URLPattern, path
from django.views.decorators.csrf import csrf_exempt

from realtime import api, sse, views

urlpatterns: list[URLPattern] = [
    # GET only, so CSRF protects nothing here: exempt, other methods get 405 rather than
    # a CSRF 403.
    path("events/", csrf_exempt(sse.events), name="realtime-events"),
    path("api/realtime/token/", api.TokenView.as_view(), name="realtime-token"),
    path("api/realtime/publish/", api.PublishView.as_view(), name="realtime-publish"),
    path("live/", views.live, name="realtime-live"),
    path("live/like", views.like, name="realtime-like"),
    path(
        "live/login/", LoginView.as_view(template_name="realtime/login.html"), name="realtime-login"
    ),
    path("api/presence/", api.PresenceView.as_view(), name="realtime-presence"),
]
