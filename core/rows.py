"""Idempotent inserts: rows a task creates once, whatever its reruns."""

from collections.abc import Callable, Hashable, Sequence
from contextlib import nullcontext
from typing import TypeVar

from django.db import IntegrityError, models, router, transaction

M = TypeVar("M", bound=models.Model)


def rows_create(
    rows: Sequence[M], *, key: Callable[[M], Hashable], stored: Callable[[], models.QuerySet[M]]
) -> list[M]:
    """Insert `rows` (new instances of one model, unique by `key`) and answer the stored
    row of each, in order: the new row with its primary key, or, where a unique
    constraint says the row exists already (a rerun of the same work), the one stored.

    The first run, by far the common one, is a single INSERT that returns the new keys:
    no transaction of its own for one row, no read back. Only a run that meets rows of an
    earlier one pays for an insert that skips them and a read of `stored()`.
    """
    if not rows:
        return []
    model = type(rows[0])
    database = router.db_for_write(model)
    # Inside a transaction a failed INSERT would poison it: try it in a savepoint there.
    attempt = transaction.atomic(using=database) if transaction.get_connection(database).in_atomic_block else nullcontext()
    try:
        with attempt:
            if len(rows) == 1:
                rows[0].save(force_insert=True, using=database)
            else:
                model._default_manager.db_manager(database).bulk_create(rows)
        return list(rows)
    except IntegrityError:
        for row in rows:  # the failed attempt may have set keys that were rolled back
            row.pk = None
            row._state.adding = True
    model._default_manager.db_manager(database).bulk_create(rows, ignore_conflicts=True)
    by_key = {key(row): row for row in stored()}
    return [by_key[key(row)] for row in rows]
