"""Idempotent inserts (core.rows): a rerun of the same work answers the rows the first
run stored, and a clash never breaks the transaction it happens in."""

import pytest

from core.rows import rows_create
from notifications.models import Delivery, Event
from tests.factories import EventFactory, UserFactory

pytestmark = pytest.mark.django_db


def deliveries(event: Event, user_ids: list[int]) -> list[Delivery]:
    return [
        Delivery(event=event, subscriber="transactional_email", recipient=f"user:{pk}", channel="email", user_id=pk)
        for pk in user_ids
    ]


def create(event: Event, user_ids: list[int]) -> list[Delivery]:
    return rows_create(
        deliveries(event, user_ids),
        key=lambda delivery: delivery.recipient,
        stored=lambda: Delivery.objects.filter(event=event, recipient__in=[f"user:{pk}" for pk in user_ids]),
    )


@pytest.mark.parametrize("count", [1, 3])
def test_a_first_run_creates_every_row_with_its_key(count: int) -> None:
    event = EventFactory.create()
    users = [UserFactory.create().pk for _ in range(count)]

    created = create(event, users)

    assert [d.recipient for d in created] == [f"user:{pk}" for pk in users]
    assert all(d.pk is not None for d in created)
    assert Delivery.objects.count() == count


def test_a_rerun_of_one_answers_the_stored_row_as_it_is_now() -> None:
    # The test runs inside a transaction, as a caller may: the clash must not poison it.
    event, user = EventFactory.create(), UserFactory.create()
    [first] = create(event, [user.pk])
    Delivery.objects.filter(pk=first.pk).update(status=Delivery.Status.SENT)

    [again] = create(event, [user.pk])

    assert (again.pk, again.status) == (first.pk, Delivery.Status.SENT)
    assert Delivery.objects.count() == 1


def test_a_rerun_of_many_keeps_the_stored_rows_adds_the_new_and_keeps_the_order() -> None:
    event = EventFactory.create()
    old = [UserFactory.create().pk for _ in range(2)]
    first = create(event, old)
    newcomer = UserFactory.create().pk

    again = create(event, [old[0], newcomer, old[1]])

    assert [d.recipient for d in again] == [f"user:{pk}" for pk in (old[0], newcomer, old[1])]
    assert (again[0].pk, again[2].pk) == (first[0].pk, first[1].pk)
    assert again[1].pk not in {first[0].pk, first[1].pk}
    assert Delivery.objects.count() == 3
