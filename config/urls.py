from django.conf import settings
from django.contrib import admin
from django.urls import include, path
from django.views.generic import TemplateView
from drf_spectacular.views import SpectacularSwaggerSplitView

from core import health, metrics
from core.views import SchemaView

urlpatterns = [
    path("", TemplateView.as_view(template_name="index.html"), name="index"),
    path("healthz", health.healthz, name="healthz"),
    path("readyz", health.readyz, name="readyz"),
    path("metrics", metrics.metrics, name="metrics"),
    path("admin/", admin.site.urls),
    path("api/", include("notifications.api.urls")),
    path("api/", include("rooms.api.urls")),
    path("", include("realtime.urls")),
]
if settings.CARILLON_API_DOCS_ENABLED:
    urlpatterns += [
        path("api/schema/", SchemaView.as_view(), name="api-schema"),
        # The split view serves Swagger UI's start-up script as a file: the page needs no
        # inline script, so the Content-Security-Policy can forbid them.
        path("api/docs/", SpectacularSwaggerSplitView.as_view(url_name="api-schema"), name="api-docs"),
    ]
