"""Twilio's status callback: verified before it changes anything."""

import logging

from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST
from twilio.request_validator import RequestValidator

from core.errors import error_response
from core.schema import ERROR_CONTENT, plain_view_operation
from notifications.providers.twilio.statuses import twilio_delivery_status
from notifications.services.delivery_status import delivery_apply_provider_status

logger = logging.getLogger(__name__)


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
        return error_response("invalid_signature", "X-Twilio-Signature does not match this request", status=403)
    status = request.POST.get("MessageStatus", "")
    if not status:
        return error_response("invalid_callback", "MessageStatus is missing")
    delivery = delivery_apply_provider_status(
        delivery_id=delivery_id,
        provider="twilio",
        status=status,
        delivery_status=twilio_delivery_status(status),
        provider_message_id=request.POST.get("MessageSid", ""),
        payload=request.POST.dict(),
    )
    if delivery is None:
        return error_response("unknown_delivery", f"no delivery {delivery_id}", status=404)
    return HttpResponse(status=204)


plain_view_operation(
    "/api/webhooks/twilio/{delivery_id}/",
    "post",
    {
        "operationId": "webhooks_twilio_status_callback",
        "summary": "Twilio's status callback for one SMS delivery",
        "tags": ["webhooks"],
        "parameters": [
            {
                "name": "X-Twilio-Signature",
                "in": "header",
                "required": True,
                "description": "Twilio's signature of the public URL and the form fields",
                "schema": {"type": "string"},
            }
        ],
        "requestBody": {
            "required": True,
            "content": {
                "application/x-www-form-urlencoded": {
                    "schema": {
                        "type": "object",
                        "properties": {
                            "MessageSid": {"type": "string"},
                            "MessageStatus": {"type": "string", "description": "queued, sent, delivered, failed, ..."},
                            "AccountSid": {"type": "string"},
                            "ErrorCode": {"type": "string"},
                        },
                        "required": ["MessageStatus"],
                    }
                }
            },
        },
        "responses": {
            "204": {"description": "applied (or an older status, ignored)"},
            "400": {"description": "MessageStatus is missing (`invalid_callback`)", "content": ERROR_CONTENT},
            "403": {"description": "the signature does not match (`invalid_signature`)", "content": ERROR_CONTENT},
            "404": {"description": "no such delivery (`unknown_delivery`)", "content": ERROR_CONTENT},
        },
    },
)
