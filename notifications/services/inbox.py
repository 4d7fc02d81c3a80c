"""A user's in-app inbox: marking notifications read."""

from django.utils import timezone

from notifications.models import Notification


def notification_mark_read(*, user_id: int, notification_id: int | None = None) -> int:
    """Mark one of the user's notifications read, or all of them; return how many changed."""
    unread = Notification.objects.filter(user_id=user_id, read_at__isnull=True)
    if notification_id is not None:
        unread = unread.filter(pk=notification_id)
    return unread.update(read_at=timezone.now())
