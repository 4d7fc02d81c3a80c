"""Digest emails: exactly the unread notifications of the period, once, whatever the
schedule does (late runs, repeated runs, daylight saving, a changed time zone)."""

from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from django.core import mail
from django.test import override_settings
from rest_framework.test import APIClient

from notifications.digests import digest_due_user_ids, digest_prepare, digest_send
from notifications.models import Digest, Notification, Recipient
from tests.factories import recipient_user

pytestmark = pytest.mark.django_db

PARIS = ZoneInfo("Europe/Paris")


@pytest.fixture
def ada() -> Any:
    return recipient_user("ada", digest_frequency="daily")


def notify(user: Any, title: str, at: datetime, *, read: bool = False) -> Notification:
    notification = Notification.objects.create(user=user, kind="video.liked", title=title)
    Notification.objects.filter(pk=notification.pk).update(created_at=at, read_at=at if read else None)
    return notification


def run_digests(now: datetime) -> list[Digest]:
    """What the scheduled job does at `now`, sends included."""
    sent = []
    for user_id in digest_due_user_ids(now=now):
        digest = digest_prepare(user_id=user_id, now=now)
        if digest is not None and digest_send(digest_id=digest.pk, now=now):
            sent.append(Digest.objects.get(pk=digest.pk))
    return sent


def titles_in(message: Any) -> list[str]:
    return [line[2:].split(" (")[0] for line in message.body.splitlines() if line.startswith("- ")]


def at(day: int, hour: int, minute: int = 0, month: int = 11) -> datetime:
    return datetime(2026, month, day, hour, minute, tzinfo=UTC)


def test_digest_batches_exactly_the_unread_notifications_of_the_day(ada: Any, django_user_model: Any) -> None:
    bo = django_user_model.objects.create_user("bo", "bo@example.com")
    notify(ada, "before the period", at(21, 23, 59))
    notify(ada, "first", at(22, 0, 0))
    notify(ada, "read already", at(22, 9), read=True)
    notify(ada, "second", at(22, 23, 59))
    notify(ada, "after the period", at(23, 0, 0))
    notify(bo, "someone else's", at(22, 12))

    [digest] = run_digests(at(23, 7))

    [message] = mail.outbox
    assert message.to == ["ada@example.com"]
    assert message.subject == "2 unread notifications on Carillon"
    assert titles_in(message) == ["first", "second"]
    assert (digest.period_start, digest.period_end, digest.status) == (at(22, 0), at(23, 0), "sent")
    assert message.extra_headers["Message-ID"] == f"<digest-{digest.pk}.{ada.pk}@carillon>"


def test_a_second_run_sends_nothing_and_a_late_run_covers_the_gap_once(ada: Any) -> None:
    notify(ada, "monday", at(23, 10))
    notify(ada, "tuesday", at(24, 10))
    notify(ada, "wednesday", at(25, 10))

    first = run_digests(at(24, 7))
    again = run_digests(at(24, 7, 30))
    late = run_digests(at(26, 18))  # the job did not run on the 25th

    assert len(first) == 1 and again == [] and len(late) == 1
    assert [titles_in(m) for m in mail.outbox] == [["monday"], ["tuesday", "wednesday"]]


def test_digest_sends_nothing_for_users_who_chose_off_or_nothing_unread(ada: Any, django_user_model: Any) -> None:
    quiet = recipient_user("quiet", digest_frequency="off")
    notify(quiet, "never digested", at(22, 10))

    assert run_digests(at(23, 7)) == []
    assert mail.outbox == []
    assert Digest.objects.get(user=ada).status == "empty"  # recorded: the next one starts after it


def test_weekly_digest_covers_monday_to_monday(ada: Any) -> None:
    Recipient.objects.filter(user=ada).update(digest_frequency="weekly")
    notify(ada, "last week", at(15, 10))
    notify(ada, "this week", at(17, 10))
    notify(ada, "sunday night", at(22, 23))

    midweek = run_digests(at(20, 7))  # Friday: Monday 16th's digest (9th-16th)
    monday = run_digests(at(23, 7))

    assert [(d.period_start, d.period_end) for d in midweek + monday] == [
        (at(9, 0), at(16, 0)), (at(16, 0), at(23, 0)),
    ]
    assert [titles_in(m) for m in mail.outbox] == [["last week"], ["this week", "sunday night"]]


def test_a_digest_left_pending_by_a_dead_sender_is_sent_later_with_the_same_message_id(ada: Any) -> None:
    notify(ada, "one", at(22, 10))
    digest = digest_prepare(user_id=ada.pk, now=at(23, 7))
    assert digest is not None
    Digest.objects.filter(pk=digest.pk).update(claimed_until=at(23, 7, 1))  # a sender took it, then died

    during_lease = digest_send(digest_id=digest.pk, now=at(23, 7))
    after_lease = digest_send(digest_id=digest.pk, now=at(23, 8))
    once_more = digest_send(digest_id=digest.pk, now=at(23, 9))

    assert (during_lease, after_lease, once_more) == (False, True, False)
    assert len(mail.outbox) == 1


@override_settings(CARILLON_DIGEST_TIME_ZONE="Europe/Paris")
def test_daily_digests_across_daylight_saving_cover_each_local_day_once(ada: Any) -> None:
    # Paris goes from +01:00 to +02:00 at 02:00 on 29 March: that day has 23 hours.
    start = datetime(2026, 3, 26, 0, 0, tzinfo=PARIS)
    hourly = [start.astimezone(UTC) + timedelta(hours=n) for n in range(6 * 24)]
    for moment in hourly:
        notify(ada, moment.isoformat(), moment)

    for day in range(27, 32):
        run_digests(datetime(2026, 3, day, 7, 0, tzinfo=PARIS))
        run_digests(datetime(2026, 3, day, 7, 0, tzinfo=PARIS))  # beat ran it twice

    digests = list(Digest.objects.filter(user=ada).order_by("period_end"))
    spans = [(d.period_end - d.period_start) / timedelta(hours=1) for d in digests]
    assert [d.period_end.astimezone(PARIS).hour for d in digests] == [0] * 5
    assert spans == [24, 24, 24, 23, 24]  # 29 March 00:00 → 30 March 00:00 is 23 hours
    digested = [title for message in mail.outbox for title in titles_in(message)]
    in_periods = [m.isoformat() for m in hourly if digests[0].period_start <= m < digests[-1].period_end]
    assert digested == in_periods  # each hour's notification exactly once, in order


def test_changing_the_time_zone_moves_the_boundary_without_a_gap_or_a_repeat(ada: Any) -> None:
    hourly = [at(22, 0) + timedelta(hours=n) for n in range(72)]
    for moment in hourly:
        notify(ada, moment.isoformat(), moment)

    with override_settings(CARILLON_DIGEST_TIME_ZONE="UTC"):
        run_digests(at(23, 7))
    with override_settings(CARILLON_DIGEST_TIME_ZONE="Asia/Tokyo"):  # midnight is 15:00 UTC
        run_digests(at(24, 22))
    with override_settings(CARILLON_DIGEST_TIME_ZONE="America/New_York"):  # midnight is 05:00 UTC
        run_digests(at(25, 7))

    digested = [title for message in mail.outbox for title in titles_in(message)]
    assert [d.period_end for d in Digest.objects.order_by("period_end")] == [at(23, 0), at(24, 15), at(25, 5)]
    assert digested == [m.isoformat() for m in hourly if m < at(25, 5)]


def test_digest_preference_through_the_api(ada: Any) -> None:
    api = APIClient()
    api.force_authenticate(ada)

    assert api.get("/api/preferences/digest/").json() == {"frequency": "daily"}
    assert api.put("/api/preferences/digest/", {"frequency": "weekly"}, format="json").json() == {"frequency": "weekly"}
    refused = api.put("/api/preferences/digest/", {"frequency": "hourly"}, format="json")

    assert Recipient.objects.get(user=ada).digest_frequency == "weekly"
    assert refused.status_code == 400 and refused.json()["error"] == "invalid_digest_frequency"


def test_a_user_without_recipient_row_has_digests_off(django_user_model: Any) -> None:
    bo = django_user_model.objects.create_user("bo", "bo@example.com")
    api = APIClient()
    api.force_authenticate(bo)

    assert api.get("/api/preferences/digest/").json() == {"frequency": "off"}
    assert api.put("/api/preferences/digest/", {"frequency": "daily"}, format="json").status_code == 200
    assert digest_due_user_ids(now=at(23, 7)) == [bo.pk]
