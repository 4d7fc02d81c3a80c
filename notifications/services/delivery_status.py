"""How a delivery's status moves: which statuses are final, a send recorded, a
provider's later report applied, and always forward."""

from functools import cache
from typing import Any

from django.db import connection
from django.db.models import Case, F, Field, Q, Value, When
from django.utils import timezone

from notifications.models import Delivery, ProviderCallback
from notifications.providers.base import SendResult

FINAL_STATUSES = frozenset(
    {
        Delivery.Status.SENT,
        Delivery.Status.DELIVERED,
        Delivery.Status.UNDELIVERED,
        Delivery.Status.FAILED,
        Delivery.Status.SKIPPED,
        Delivery.Status.CANCELLED,
    }
)
# Provider callbacks only move a delivery forward: a late "sent" never undoes "delivered".
STATUS_RANK = {
    Delivery.Status.PENDING: 0,
    Delivery.Status.SENDING: 1,
    Delivery.Status.SENT: 2,
    Delivery.Status.DELIVERED: 3,
    Delivery.Status.UNDELIVERED: 3,
    Delivery.Status.FAILED: 3,
}
# Sends recorded per statement: three parameters each, far inside SQLite's and
# PostgreSQL's limits.
MARK_SENT_ROWS = 1000


def delivery_mark_sent(which: Q, *, provider_message_id: str | None, response: dict[str, Any]) -> int:
    """Record a send. A status callback may already have moved a delivery past "sent":
    only "sending" becomes "sent". `provider_message_id=None` keeps each row's own."""
    sending = Q(status=Delivery.Status.SENDING)
    fields: dict[str, Any] = {
        "status": Case(When(sending, then=Value(Delivery.Status.SENT)), default=F("status")),
        "sent_at": Case(When(sending, then=Value(timezone.now())), default=F("sent_at")),
        "provider_response": response,
        "last_error": "",
        "claim_token": None,
        "claimed_until": None,
    }
    if provider_message_id is not None:
        fields["provider_message_id"] = provider_message_id
    return Delivery.objects.filter(which).update(**fields)


def deliveries_mark_sent(sent: dict[int, SendResult]) -> None:
    """Record sends (delivery pk → result), one for a transactional delivery or a whole
    piece of a broadcast: one UPDATE joined to the rows' values, per MARK_SENT_ROWS.

    A status callback may already have moved a delivery past "sent": only "sending"
    becomes "sent" (the right-hand sides of an UPDATE read the row as it was). Written in
    SQL because this runs once per delivery: the ORM compiled the same CASE expressions
    for every send, Django's bulk_update builds a CASE branch per row and field, and a
    statement per row (executemany) has the database parse and plan each one (the three
    cost up to two fifths of a broadcast worker's CPU).
    """
    now = connection.ops.adapt_datetimefield_value(timezone.now())
    response_field = Delivery._meta.get_field("provider_response")
    rows = [
        (pk, result.provider_message_id, response_field.get_db_prep_save(result.response, connection))
        for pk, result in sent.items()
    ]
    with connection.cursor() as cursor:
        for start in range(0, len(rows), MARK_SENT_ROWS):
            piece = rows[start : start + MARK_SENT_ROWS]
            parameters = [Delivery.Status.SENDING, Delivery.Status.SENT, Delivery.Status.SENDING, now]
            cursor.execute(_mark_sent_statement(len(piece)), parameters + [value for row in piece for value in row])


@cache
def _mark_sent_statement(rows: int) -> str:
    meta = Delivery._meta
    quote = connection.ops.quote_name

    def column(name: str) -> str:
        field = meta.get_field(name)
        assert isinstance(field, Field)  # noqa: S101 - a concrete column, for the type checker
        return quote(str(field.column))

    table, status = quote(meta.db_table), column("status")
    # VALUES names its columns column1, column2, … on both SQLite and PostgreSQL. Only the
    # model's own table and column names go into the text; values are parameters.
    return (
        f"UPDATE {table} SET "  # noqa: S608
        f"{status} = CASE WHEN {status} = %s THEN %s ELSE {status} END, "
        f"{column('sent_at')} = CASE WHEN {status} = %s THEN %s ELSE {column('sent_at')} END, "
        f"{column('provider_message_id')} = sent.column2, {column('provider_response')} = sent.column3, "
        f"{column('last_error')} = '', {column('claim_token')} = NULL, {column('claimed_until')} = NULL "
        f"FROM (VALUES {', '.join(['(%s, %s, %s)'] * rows)}) AS sent "
        f"WHERE {table}.{quote(str(meta.pk.column))} = sent.column1"
    )


def delivery_apply_provider_status(
    *,
    delivery_id: int,
    provider: str,
    status: str,
    delivery_status: Delivery.Status | None,
    provider_message_id: str,
    payload: dict[str, Any],
) -> Delivery | None:
    """Record a provider's status callback; move the delivery forward, never back.

    `status` is the provider's own word, kept with the callback; `delivery_status` is what
    it means for the delivery (None: nothing to move), as the provider's package reads it.
    Idempotent: the same callback twice records it twice but changes the status once.
    """
    delivery = Delivery.objects.filter(pk=delivery_id).first()
    if delivery is None:
        return None
    ProviderCallback.objects.create(delivery=delivery, provider=provider, status=status, payload=payload)
    if delivery_status is not None:
        lower = [s for s, rank in STATUS_RANK.items() if rank < STATUS_RANK[delivery_status]]
        Delivery.objects.filter(pk=delivery_id, status__in=lower).update(status=delivery_status)
    if provider_message_id:
        Delivery.objects.filter(pk=delivery_id, provider_message_id="").update(
            provider_message_id=provider_message_id
        )
    delivery.refresh_from_db()
    return delivery
