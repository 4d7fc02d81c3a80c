"""Mixpanel's official client, optionally aimed at another base URL (the provider sandbox)."""

from django.conf import settings
from mixpanel import BufferedConsumer, Consumer, Mixpanel


def mixpanel_consumer(*, buffered: bool = False, batch_size: int = 50) -> Consumer | BufferedConsumer:
    """Build the consumer that posts to /track and /import, at MIXPANEL_API_BASE_URL if set."""
    base = settings.MIXPANEL_API_BASE_URL.rstrip("/")
    urls = {"events_url": f"{base}/track", "import_url": f"{base}/import"} if base else {}
    if buffered:
        return BufferedConsumer(max_size=batch_size, **urls)
    return Consumer(**urls)


def mixpanel_client(*, buffered: bool = False) -> Mixpanel:
    """Build a Mixpanel client for MIXPANEL_TOKEN."""
    return Mixpanel(settings.MIXPANEL_TOKEN, consumer=mixpanel_consumer(buffered=buffered))

