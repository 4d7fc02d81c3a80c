"""Shared by the whole suite."""

from django.test import TransactionTestCase

from tests.database import database_empty


def _fixture_teardown(self: TransactionTestCase) -> None:
    for using in self._databases_names(include_mirrors=False):  # type: ignore[attr-defined]
        database_empty(using)


# pytest-django runs a transactional test as a TransactionTestCase, which empties the
# database afterwards with this method.
TransactionTestCase._fixture_teardown = _fixture_teardown  # type: ignore[attr-defined]
