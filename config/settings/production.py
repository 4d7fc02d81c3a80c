"""Production settings: every secret and URL comes from the environment, none defaulted.

A missing variable stops start-up with django-environ's ImproperlyConfigured
("Set the X environment variable"), naming the variable to set.
"""

from config.env import celery_redis_url, channel_layer_host, database_config, env, required_secret
from config.settings.base import *  # noqa: F403

DEBUG = False
ALLOWED_HOSTS = env.list("DJANGO_ALLOWED_HOSTS")
CARILLON_PUBLIC_URL = env("CARILLON_PUBLIC_URL")
DATABASES = {"default": database_config(env("DATABASE_URL"))}
RABBITMQ_URL = env("RABBITMQ_URL")
RABBITMQ_MANAGEMENT_URL = env("RABBITMQ_MANAGEMENT_URL")
REDIS_URL = env("REDIS_URL")
CELERY_BROKER_URL = RABBITMQ_URL
# REDIS_SENTINELS and REDIS_SENTINEL_MASTER as in base (optional: one Redis without them).
BACKGROUND_CELERY_BROKER_URL = celery_redis_url(REDIS_URL, REDIS_SENTINELS)  # noqa: F405
BACKGROUND_CELERY_RESULT_BACKEND = BACKGROUND_CELERY_BROKER_URL
CHANNEL_LAYERS["default"]["CONFIG"]["hosts"] = [  # noqa: F405
    channel_layer_host(REDIS_URL, REDIS_SENTINELS, REDIS_SENTINEL_MASTER)  # noqa: F405
]

# Email goes through an ESP by django-anymail (e.g. "anymail.backends.mailgun.EmailBackend"),
# configured by ANYMAIL_* variables as anymail documents.
EMAIL_BACKEND = env("EMAIL_BACKEND")
ANYMAIL = env.dict("ANYMAIL", default={})
DEFAULT_FROM_EMAIL = env("DEFAULT_FROM_EMAIL")
TWILIO_ACCOUNT_SID = env("TWILIO_ACCOUNT_SID")
TWILIO_AUTH_TOKEN = env("TWILIO_AUTH_TOKEN")
TWILIO_FROM_NUMBER = env("TWILIO_FROM_NUMBER")
MIXPANEL_API_SECRET = env("MIXPANEL_API_SECRET")
# The chat platform signs its delivery acks with it (rooms/providers.py).
ROOMS_CHAT_WEBHOOK_SECRET = required_secret("ROOMS_CHAT_WEBHOOK_SECRET")

# HTTPS only. daphne speaks plain HTTP behind a TLS-terminating proxy, which must set
# X-Forwarded-Proto (and overwrite any a client sent): that is how Django knows a request
# came in over HTTPS, and redirects the ones that did not.
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SECURE_SSL_REDIRECT = env.bool("DJANGO_SECURE_SSL_REDIRECT", default=True)
# Probes come from the load balancer over plain HTTP, inside the network.
SECURE_REDIRECT_EXEMPT = [r"^healthz$", r"^readyz$"]
# A year, subdomains included: browsers then never try plain HTTP. Start lower
# (DJANGO_SECURE_HSTS_SECONDS=3600) on a domain not yet all HTTPS: it cannot be taken back.
SECURE_HSTS_SECONDS = env.int("DJANGO_SECURE_HSTS_SECONDS", default=31_536_000)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env.bool("DJANGO_SECURE_HSTS_INCLUDE_SUBDOMAINS", default=True)
SECURE_HSTS_PRELOAD = env.bool("DJANGO_SECURE_HSTS_PRELOAD", default=False)
SESSION_COOKIE_SECURE = True
CSRF_COOKIE_SECURE = True
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
# The proxy appends the client's address to X-Forwarded-For: rate limits count per client.
CARILLON_TRUSTED_PROXIES = env.int("CARILLON_TRUSTED_PROXIES", default=1)
CARILLON_THROTTLE_REDIS_URL = env("CARILLON_THROTTLE_REDIS_URL", default=REDIS_URL)
# The schema and Swagger UI tell anyone every endpoint: on only where it is meant to be public.
CARILLON_API_DOCS_ENABLED = env.bool("CARILLON_API_DOCS_ENABLED", default=False)
