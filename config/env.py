"""The one place environment variables are read from (django-environ)."""

from pathlib import Path
from urllib.parse import urlsplit

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


# Django's SQLite backend, its writers waiting for the write lock by priority (core/db).
SQLITE_ENGINE = "core.db.sqlite3"


def database_config(url: str) -> dict[str, object]:
    """Turn DATABASE_URL into Django's DATABASES entry, tuned per engine."""
    config: dict[str, object] = env.db_url_config(url)
    # Keep connections between requests and tasks: reconnecting (with SQLite's pragmas,
    # or a PostgreSQL backend's start) costs more than many a task. Celery's Django fixup
    # would close them after every task whatever this says: config/celery.py stops it.
    config["CONN_MAX_AGE"] = env.int("DATABASE_CONN_MAX_AGE", default=60)
    config["CONN_HEALTH_CHECKS"] = True
    if config["ENGINE"] == "django.db.backends.sqlite3":
        config["ENGINE"] = SQLITE_ENGINE
        # WAL lets the web process read while a worker writes; IMMEDIATE takes the write
        # lock at BEGIN so concurrent writers queue instead of failing with "locked".
        config["OPTIONS"] = {
            "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
            "transaction_mode": "IMMEDIATE",
            "timeout": 20,
        }
    elif env.bool("DATABASE_PREPARED_STATEMENTS", default=True):
        # PostgreSQL binds the parameters itself, and prepares a statement a connection
        # has run five times (parsed and planned once, not at every run): its CPU per
        # ordered message fell by a quarter (1.20 to 0.88 ms), a Celery worker's per
        # delivery by 5 %. Django leaves both off for PgBouncer in transaction mode,
        # which cannot keep a session's prepared statements: behind one, set this false
        # (session mode keeps them).
        config["OPTIONS"] = {"server_side_binding": True, "prepare_threshold": 5}
    return config


def redis_sentinels(value: list[str]) -> list[tuple[str, int]]:
    """REDIS_SENTINELS ("host:port" items) as redis-py's Sentinel takes them."""
    sentinels = []
    for item in filter(None, (item.strip() for item in value)):  # "REDIS_SENTINELS=" names none
        host, _, port = item.rpartition(":")
        if not host or not port.isdigit():
            raise ImproperlyConfigured(
                f"REDIS_SENTINELS: {item!r} is not host:port (e.g. 10.0.0.5:26379,10.0.0.6:26379)"
            )
        sentinels.append((host, int(port)))
    return sentinels


def celery_redis_url(url: str, sentinels: list[tuple[str, int]]) -> str:
    """The broker URL kombu's Redis transport takes for `url`: itself with one Redis, or
    one sentinel:// URL per Sentinel, ";"-separated (the master's name is a transport
    option), keeping the database number and password of `url`."""
    if not sentinels:
        return url
    parts = urlsplit(url)
    credentials = parts.netloc.rpartition("@")[0]
    auth = f"{credentials}@" if credentials else ""
    return ";".join(f"sentinel://{auth}{host}:{port}{parts.path}" for host, port in sentinels)


def channel_layer_host(url: str, sentinels: list[tuple[str, int]], master: str) -> str | dict[str, object]:
    """The Channels layer's Redis (channels_redis "hosts" entry): `url`, or its Sentinels."""
    if not sentinels:
        return url
    parts = urlsplit(url)
    host: dict[str, object] = {"master_name": master, "sentinels": sentinels, "db": int(parts.path.strip("/") or 0)}
    if parts.password:
        host["password"] = parts.password
    return host


def broker_urls(value: str) -> list[str]:
    """The nodes of a broker URL that may name several, separated by ";" (kombu's form).

    kombu takes "amqp://a//;amqp://b//" as one URL with failover alternates; code that
    needs one node's URL (the virtual host every node shares, the bench's) splits it here.
    """
    return [url.strip() for url in value.split(";") if url.strip()]
