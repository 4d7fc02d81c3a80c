"""ASGI entry point served by daphne: Django over HTTP, Channels consumers over WebSocket."""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.local")

# Django must be set up before anything imports models, consumers included.
django_asgi_app = get_asgi_application()

from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from channels.security.websocket import AllowedHostsOriginValidator  # noqa: E402

from config.daphne import form_parsing_off  # noqa: E402
from core.heap import heap_freeze  # noqa: E402
from realtime.connections import TransportBacklogMiddleware  # noqa: E402
from realtime.routing import websocket_urlpatterns  # noqa: E402
from rooms.api.receiver import ChatAckReceiver  # noqa: E402

# Twisted no longer parses form bodies daphne hands on unread (config/daphne.py).
form_parsing_off()

# TransportBacklogMiddleware: WebSocket and SSE connections bound what daphne holds unsent.
# ChatAckReceiver: the chat platform's acks for shard owners, forwarded without Django's
# request cycle (rooms/api/receiver.py).
application = ProtocolTypeRouter(
    {
        "http": TransportBacklogMiddleware(ChatAckReceiver(django_asgi_app)),
        "websocket": TransportBacklogMiddleware(
            AllowedHostsOriginValidator(URLRouter(websocket_urlpatterns))
        ),
    }
)
# Last: what start-up made stays alive as long as the process (core/heap.py).
heap_freeze()
