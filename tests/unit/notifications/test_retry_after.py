"""Reading a provider's Retry-After (Twilio, Mixpanel), which their libraries' exceptions leave out."""

from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest

from notifications.providers.base import retry_after_seconds


@pytest.mark.parametrize(("header", "seconds"), [("4", 4.0), ("0.5", 0.5), ("-3", 0.0), (None, None), ("soon", None)])
def test_delta_seconds_are_read_and_nonsense_is_none(header: str | None, seconds: float | None) -> None:
    assert retry_after_seconds(header) == seconds


def test_an_http_date_is_the_seconds_until_it() -> None:
    header = format_datetime(datetime.now(UTC) + timedelta(seconds=30), usegmt=True)

    assert 28 <= (retry_after_seconds(header) or 0) <= 30
    assert retry_after_seconds(format_datetime(datetime(2000, 1, 1, tzinfo=UTC), usegmt=True)) == 0.0
