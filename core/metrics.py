"""GET /metrics for Prometheus, behind authentication: a bearer token
(CARILLON_METRICS_TOKEN) for the scraper, or a signed-in staff user."""

import hmac

from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.views.decorators.http import require_GET
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from core.errors import error_response

# Each app registers its collectors when ready (notifications/apps.py, realtime/apps.py).
registry = CollectorRegistry(auto_describe=False)  # describing would query at import


def operator_authorized(request: HttpRequest) -> bool:
    """True for the metrics bearer token or a signed-in staff user."""
    token = settings.CARILLON_METRICS_TOKEN
    scheme, _, presented = request.headers.get("Authorization", "").partition(" ")
    if token and scheme.lower() == "bearer" and hmac.compare_digest(presented.strip(), token):
        return True
    return bool(request.user.is_authenticated and request.user.is_staff)


@require_GET
def metrics(request: HttpRequest) -> HttpResponse:
    if not operator_authorized(request):
        return error_response(
            "not_authenticated",
            "metrics need Authorization: Bearer <CARILLON_METRICS_TOKEN> or a staff login",
            status=401,
            headers={"WWW-Authenticate": 'Bearer realm="carillon-metrics"'},
        )
    return HttpResponse(generate_latest(registry), content_type=CONTENT_TYPE_LATEST)
