"""Settings for the test suite: `platform/test` exports the URLs of its own services."""

from config.env import SQLITE_ENGINE
from config.settings.local import *  # noqa: F403
from config.settings.local import BASE_DIR, DATABASES

PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]

# The processes the tests start (daphne, workers) run as production does: under DEBUG,
# Django keeps and formats every SQL query and answers a 404 with a page of settings.
# pytest-django turns DEBUG off in the test process itself.
DEBUG = False

# The suite sends many refused credentials from 127.0.0.1 on purpose (the API fuzzer,
# token tests): at the production default the address would be locked out for every
# later test. Tests of the lockout set their own low rates.
CARILLON_THROTTLE_RATES = {**CARILLON_THROTTLE_RATES, "credential_failures": "100000/10m"}  # noqa: F405

# Worker and daphne processes started by the tests open the same database as the test
# run, so SQLite's test database must be a file rather than the in-memory default.
if DATABASES["default"]["ENGINE"] == SQLITE_ENGINE:
    DATABASES["default"]["TEST"] = {"NAME": str(BASE_DIR / ".run" / "test.sqlite3")}
