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
    try:
        rows_insert(rows)
        return list(rows)
    except IntegrityError:
        for row in rows:  # the failed attempt may have set keys that were rolled back
            row.pk = None
            row._state.adding = True
    model = type(rows[0])
    database = router.db_for_write(model)
    model._default_manager.db_manager(database).bulk_create(rows, ignore_conflicts=True)
    by_key = {key(row): row for row in stored()}
    return [by_key[key(row)] for row in rows]


def rows_insert(rows: Sequence[models.Model]) -> None:
    """Insert new rows of one model in one INSERT that sets their primary keys: with no
    transaction of its own for one row, in a savepoint inside a caller's transaction (a
    failed INSERT would poison it). Raise IntegrityError, having inserted none, if a
    unique constraint says one exists already."""
    if not rows:
        return
    model = type(rows[0])
    database = router.db_for_write(model)
    attempt = transaction.atomic(using=database) if transaction.get_connection(database).in_atomic_block else nullcontext()
    with attempt:
        if len(rows) == 1:
            rows[0].save(force_insert=True, using=database)
        else:
            model._default_manager.db_manager(database).bulk_create(rows)
