"""The one place environment variables are read from (django-environ)."""

from pathlib import Path

import environ
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent

env = environ.Env()


def read_dotenv() -> None:
    """Load `.env` at the project root, if there is one, without overriding the environment.

    Only local and test settings call this: production reads the real environment alone,
    so a stray `.env` on a server can never supply a secret. DJANGO_READ_DOT_ENV_FILE=false
    turns it off (the test suite does, so a developer's overrides never reach it).
    """
    if not env.bool("DJANGO_READ_DOT_ENV_FILE", default=True):
        return
    dotenv = BASE_DIR / ".env"
    if dotenv.is_file():
        environ.Env.read_env(dotenv, overwrite=False)


def required_secret(name: str) -> str:
    """A secret that must be set and not empty: an empty signing secret lets anyone sign.

    Refuses with django-environ's own message, as a missing variable is refused.
    """
    value: str = env(name)
    if not value.strip():
        raise ImproperlyConfigured(f"Set the {name} environment variable (it is empty)")
    return value


def database_config(url: str) -> dict[str, object]:
    """Turn DATABASE_URL into Django's DATABASES entry, tuned per engine."""
    config: dict[str, object] = env.db_url_config(url)
    # Keep connections between requests and tasks: reconnecting (with SQLite's pragmas,
    # or a PostgreSQL backend's start) costs more than many a task. Celery's Django fixup
    # would close them after every task whatever this says: config/celery.py stops it.
    config["CONN_MAX_AGE"] = env.int("DATABASE_CONN_MAX_AGE", default=60)
    config["CONN_HEALTH_CHECKS"] = True
    if config["ENGINE"] == "django.db.backends.sqlite3":
        # WAL lets the web process read while a worker writes; IMMEDIATE takes the write
        # lock at BEGIN so concurrent writers queue instead of failing with "locked".
        config["OPTIONS"] = {
            "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
            "transaction_mode": "IMMEDIATE",
            "timeout": 20,
        }
    return config
