"""Settings for the test suite: `platform/test` exports the URLs of its own services."""

from config.settings.local import *  # noqa: F403
from config.settings.local import BASE_DIR, DATABASES

PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]

# Worker and daphne processes started by the tests open the same database as the test
# run, so SQLite's test database must be a file rather than the in-memory default.
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    DATABASES["default"]["TEST"] = {"NAME": str(BASE_DIR / ".run" / "test.sqlite3")}
