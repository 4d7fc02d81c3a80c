"""What the realtime scenarios share: the bench user's token, the run's own Redis."""

import os

from django.conf import settings


def bench_token() -> str:
    """A token for the benchmark's user (created in the run's own database)."""
    from django.contrib.auth import get_user_model

    from realtime.auth import realtime_token_create

    user, _ = get_user_model().objects.get_or_create(username="bench", defaults={"email": "bench@example.com"})
    return realtime_token_create(user_id=user.pk)


def redis_url() -> str:
    return str(settings.REALTIME_REDIS_URL)


def redis_pid() -> int:
    """The pid of the run's own Redis (started by the command before this process)."""
    return int(os.environ["CARILLON_BENCH_REDIS_PID"])
