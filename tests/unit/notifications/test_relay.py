"""The outbox claim: two publishers never hold the same row, and a dead publisher's lease
runs out so that the next relay pass takes its rows."""

import uuid
from datetime import timedelta
from unittest import mock

import pytest
import time_machine
from django.conf import settings
from django.utils import timezone

from notifications import relay
from notifications.models import Event, OutboxMessage
from notifications.relay import outbox_claim, outbox_write

pytestmark = pytest.mark.django_db

real_uuid4 = uuid.uuid4


def make_rows(count: int) -> list[OutboxMessage]:
    event = Event.objects.create(type="video.liked", version=1, occurred_at=timezone.now(), data={})
    return [OutboxMessage.objects.create(event=event, kind="envelope", payload={"n": n}) for n in range(count)]


def pks(messages: list[OutboxMessage]) -> list[int]:
    return [message.pk for message in messages]


def claim_racing(competitor: dict[str, object]) -> tuple[list[OutboxMessage], list[OutboxMessage]]:
    """Claim the oldest rows while another publisher claims (with `competitor` arguments)
    between our choosing the rows and our taking them: the window of the race."""
    theirs: list[OutboxMessage] = []

    def token() -> uuid.UUID:  # drawn after the rows are chosen, before they are taken
        if not raced:
            raced.append(True)
            theirs.extend(outbox_claim(**competitor))  # type: ignore[arg-type]
        return real_uuid4()

    raced: list[bool] = []
    with mock.patch.object(relay.uuid, "uuid4", side_effect=token):
        ours = outbox_claim(limit=4)
    assert raced, "the competitor never ran: the claim no longer draws its token in between"
    return ours, theirs


def test_a_publisher_that_chose_rows_another_took_meanwhile_gets_none_of_them() -> None:
    rows = make_rows(4)

    ours, theirs = claim_racing({"limit": 100})

    assert pks(theirs) == pks(rows)
    assert ours == []


def test_two_publishers_racing_for_overlapping_rows_each_get_the_others_leftovers_only() -> None:
    rows = make_rows(4)

    ours, theirs = claim_racing({"ids": pks(rows[:2]), "limit": 2})

    assert pks(theirs) == pks(rows[:2])
    assert pks(ours) == pks(rows[2:])
    tokens = {message.pk: message.claim_token for message in OutboxMessage.objects.all()}
    assert len({tokens[pk] for pk in pks(ours)}) == len({tokens[pk] for pk in pks(theirs)}) == 1
    assert tokens[rows[0].pk] != tokens[rows[2].pk]


def test_a_leased_row_is_not_claimed_again_until_its_lease_runs_out() -> None:
    rows = make_rows(2)
    first = outbox_claim()  # a publisher that then dies without publishing or giving back

    assert pks(first) == pks(rows)
    assert outbox_claim() == []
    lease = timedelta(seconds=settings.CARILLON_CLAIM_LEASE_SECONDS)
    with time_machine.travel(timezone.now() + lease - timedelta(seconds=1)):
        assert outbox_claim() == []
    with time_machine.travel(timezone.now() + lease + timedelta(seconds=1)):
        again = outbox_claim()

    assert pks(again) == pks(rows)
    assert {message.claim_token for message in again} != {message.claim_token for message in first}


def test_published_rows_are_never_claimed() -> None:
    published, waiting = make_rows(2)
    OutboxMessage.objects.filter(pk=published.pk).update(published_at=timezone.now())

    assert pks(outbox_claim()) == [waiting.pk]
    assert outbox_claim(ids=[published.pk]) == []


def test_rows_born_claimed_wait_for_their_fast_path_and_a_late_one_leaves_them_to_the_relay(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The test's transaction never commits: the writer's fast path has not run yet (a long
    # transaction), or never will (its process died).
    event = Event.objects.create(type="video.liked", version=1, occurred_at=timezone.now(), data={})
    written = outbox_write([OutboxMessage(event=event, kind="envelope", payload={"n": n}) for n in range(2)])
    monkeypatch.setattr(relay, "_fast_path_paused_until", 0.0)
    handed: list[OutboxMessage] = []

    def publish_claimed(messages: list[OutboxMessage]) -> int:
        handed.extend(messages)
        return len(messages)

    monkeypatch.setattr(relay, "outbox_publish_claimed", publish_claimed)

    assert outbox_claim() == []  # no relay takes them while their writer may publish them
    lease = timedelta(seconds=settings.CARILLON_CLAIM_LEASE_SECONDS)
    with time_machine.travel(timezone.now() + lease + timedelta(seconds=1)):
        taken = outbox_claim()  # the lease ran out: the relay takes them
        late = relay.outbox_publish(claimed=written)  # and the fast path, come at last, does not

    assert pks(taken) == pks(written)
    assert late == 0 and handed == []
