from django.apps import AppConfig


class BenchmarksConfig(AppConfig):
    """`manage.py bench`: its scenarios, raw baselines and reports. Its Celery tasks live in
    `baseline_tasks.py`, a name autodiscovery does not look for: only bench workers load
    them (`--include benchmarks.baseline_tasks`), never Carillon's own."""

    name = "benchmarks"
