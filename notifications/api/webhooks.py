"""Provider callbacks. Each is verified before it changes anything."""

import logging

from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST
from twilio.request_validator import RequestValidator

from notifications.services import delivery_apply_provider_status

logger = logging.getLogger(__name__)


def _error(code: str, message: str, status: int) -> JsonResponse:
    return JsonResponse({"error": code, "message": message, "detail": {}}, status=status)


@csrf_exempt
@require_POST
def twilio_status_callback(request: HttpRequest, delivery_id: int) -> HttpResponse:
    """Twilio's status callback for one SMS delivery, signed with X-Twilio-Signature.

    Twilio signs the URL it called, so the signature is checked against the public URL
    (CARILLON_PUBLIC_URL), not the one a proxy forwarded to.
    """
    url = settings.CARILLON_PUBLIC_URL.rstrip("/") + request.get_full_path()
    signature = request.headers.get("X-Twilio-Signature", "")
    if not RequestValidator(settings.TWILIO_AUTH_TOKEN).validate(url, request.POST, signature):
        logger.warning("twilio callback for delivery %s: invalid signature", delivery_id)
        return _error("invalid_signature", "X-Twilio-Signature does not match this request", 403)
    status = request.POST.get("MessageStatus", "")
    if not status:
        return _error("invalid_callback", "MessageStatus is missing", 400)
    delivery = delivery_apply_provider_status(
        delivery_id=delivery_id, provider="twilio", status=status, payload=request.POST.dict()
    )
    if delivery is None:
        return _error("unknown_delivery", f"no delivery {delivery_id}", 404)
    return HttpResponse(status=204)
