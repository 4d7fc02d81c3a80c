"""Production settings refuse to start without their secrets and URLs."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from config.env import database_config

ROOT = Path(__file__).resolve().parents[2]

PRODUCTION_ENVIRONMENT = {
    "DJANGO_SECRET_KEY": "x" * 50,
    "DJANGO_ALLOWED_HOSTS": "carillon.example.com",
    "CARILLON_PUBLIC_URL": "https://carillon.example.com",
    "DATABASE_URL": "postgres://carillon@db.example.com/carillon",
    "RABBITMQ_URL": "amqps://carillon:secret@mq.example.com//",
    "RABBITMQ_MANAGEMENT_URL": "https://carillon:secret@mq.example.com/api/",
    "REDIS_URL": "rediss://redis.example.com:6379/0",
    "EMAIL_BACKEND": "anymail.backends.mailgun.EmailBackend",
    "DEFAULT_FROM_EMAIL": "noreply@example.com",
    "TWILIO_ACCOUNT_SID": "AC" + "1" * 32,
    "TWILIO_AUTH_TOKEN": "token",
    "TWILIO_FROM_NUMBER": "+15550000000",
    "MIXPANEL_API_SECRET": "secret",
    "ROOMS_CHAT_WEBHOOK_SECRET": "secret",
}


def load_production_settings(environment: dict[str, str]) -> subprocess.CompletedProcess[str]:
    clean = {key: value for key, value in os.environ.items() if key not in PRODUCTION_ENVIRONMENT}
    return subprocess.run(
        [sys.executable, "-c", "from django.conf import settings; print(settings.DEBUG)"],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
        env={**clean, **environment, "DJANGO_SETTINGS_MODULE": "config.settings.production"},
    )


def test_production_settings_load_when_everything_is_set() -> None:
    result = load_production_settings(PRODUCTION_ENVIRONMENT)

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"


@pytest.mark.parametrize("missing", sorted(PRODUCTION_ENVIRONMENT))
def test_production_settings_name_the_missing_variable(missing: str) -> None:
    environment = {key: value for key, value in PRODUCTION_ENVIRONMENT.items() if key != missing}

    result = load_production_settings(environment)

    assert result.returncode != 0
    assert f"Set the {missing} environment variable" in result.stderr


def test_production_settings_take_a_rabbitmq_cluster_and_redis_sentinels() -> None:
    environment = {
        **PRODUCTION_ENVIRONMENT,
        "RABBITMQ_URL": "amqps://carillon:secret@mq1.example.com//;amqps://carillon:secret@mq2.example.com//",
        "REDIS_SENTINELS": "10.0.0.5:26379,10.0.0.6:26379",
    }
    clean = {key: value for key, value in os.environ.items() if key not in environment}
    result = subprocess.run(
        [sys.executable, "-c", "import json; from django.conf import settings as s; print(json.dumps(["
         "s.CELERY_BROKER_URL, s.BACKGROUND_CELERY_BROKER_URL, s.BACKGROUND_CELERY_BROKER_TRANSPORT_OPTIONS]))"],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
        env={**clean, **environment, "DJANGO_SETTINGS_MODULE": "config.settings.production"},
    )

    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == [
        environment["RABBITMQ_URL"],
        "sentinel://10.0.0.5:26379/0;sentinel://10.0.0.6:26379/0",
        {"master_name": "carillon"},
    ]


PRODUCTION_SECURITY = """
import json
import django
from django.conf import settings
from django.urls import Resolver404, resolve

django.setup()


def served(path):
    try:
        resolve(path)
    except Resolver404:
        return False
    return True


print(json.dumps({
    "hsts": [settings.SECURE_HSTS_SECONDS, settings.SECURE_HSTS_INCLUDE_SUBDOMAINS],
    "ssl_redirect": settings.SECURE_SSL_REDIRECT,
    "proxy_ssl_header": list(settings.SECURE_PROXY_SSL_HEADER),
    "secure_cookies": [settings.SESSION_COOKIE_SECURE, settings.CSRF_COOKIE_SECURE],
    "csp": settings.CARILLON_CONTENT_SECURITY_POLICY,
    "csp_middleware": "core.csp.ContentSecurityPolicyMiddleware" in settings.MIDDLEWARE,
    "trusted_proxies": settings.CARILLON_TRUSTED_PROXIES,
    "api_docs": [served("/api/schema/"), served("/api/docs/")],
}))
"""


def production_security(environment: dict[str, str]) -> dict[str, object]:
    clean = {key: value for key, value in os.environ.items() if key not in PRODUCTION_ENVIRONMENT}
    result = subprocess.run(
        [sys.executable, "-c", PRODUCTION_SECURITY],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
        env={**clean, **environment, "DJANGO_SETTINGS_MODULE": "config.settings.production"},
    )
    assert result.returncode == 0, result.stderr
    answer: dict[str, object] = json.loads(result.stdout)
    return answer


def test_production_is_https_only_with_a_content_security_policy_and_no_public_schema() -> None:
    answer = production_security(PRODUCTION_ENVIRONMENT)

    assert answer["hsts"] == [31_536_000, True]
    assert answer["ssl_redirect"] is True
    assert answer["proxy_ssl_header"] == ["HTTP_X_FORWARDED_PROTO", "https"]
    assert answer["secure_cookies"] == [True, True]
    assert answer["csp_middleware"] is True
    assert "script-src 'self';" in str(answer["csp"])
    assert answer["trusted_proxies"] == 1
    assert answer["api_docs"] == [False, False]


def test_production_serves_the_schema_when_the_setting_says_so() -> None:
    answer = production_security({**PRODUCTION_ENVIRONMENT, "CARILLON_API_DOCS_ENABLED": "true"})

    assert answer["api_docs"] == [True, True]


def test_production_settings_refuse_an_empty_chat_webhook_secret() -> None:
    # Empty, anyone could sign the chat platform's acks.
    result = load_production_settings({**PRODUCTION_ENVIRONMENT, "ROOMS_CHAT_WEBHOOK_SECRET": ""})

    assert result.returncode != 0
    assert "Set the ROOMS_CHAT_WEBHOOK_SECRET environment variable" in result.stderr


def test_postgresql_prepares_its_statements_unless_told_not_to(monkeypatch: pytest.MonkeyPatch) -> None:
    url = "postgres://carillon@db.example:5432/carillon"
    assert database_config(url)["OPTIONS"] == {"server_side_binding": True, "prepare_threshold": 5}

    monkeypatch.setenv("DATABASE_PREPARED_STATEMENTS", "false")  # behind PgBouncer in transaction mode

    assert "OPTIONS" not in database_config(url)
