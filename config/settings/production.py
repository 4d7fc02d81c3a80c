"""Production settings: every secret and URL comes from the environment, none defaulted.

A missing variable stops start-up with django-environ's ImproperlyConfigured
("Set the X environment variable"), naming the variable to set.
"""

from config.env import database_config, env, required_secret
from config.settings.base import *  # noqa: F403

DEBUG = False
ALLOWED_HOSTS = env.list("DJANGO_ALLOWED_HOSTS")
CARILLON_PUBLIC_URL = env("CARILLON_PUBLIC_URL")
DATABASES = {"default": database_config(env("DATABASE_URL"))}
RABBITMQ_URL = env("RABBITMQ_URL")
RABBITMQ_MANAGEMENT_URL = env("RABBITMQ_MANAGEMENT_URL")
REDIS_URL = env("REDIS_URL")
CELERY_BROKER_URL = RABBITMQ_URL
BACKGROUND_CELERY_BROKER_URL = REDIS_URL
BACKGROUND_CELERY_RESULT_BACKEND = REDIS_URL
CHANNEL_LAYERS["default"]["CONFIG"]["hosts"] = [REDIS_URL]  # noqa: F405

# Email goes through an ESP by django-anymail (e.g. "anymail.backends.mailgun.EmailBackend"),
# configured by ANYMAIL_* variables as anymail documents.
EMAIL_BACKEND = env("EMAIL_BACKEND")
ANYMAIL = env.dict("ANYMAIL", default={})
DEFAULT_FROM_EMAIL = env("DEFAULT_FROM_EMAIL")
TWILIO_ACCOUNT_SID = env("TWILIO_ACCOUNT_SID")
TWILIO_AUTH_TOKEN = env("TWILIO_AUTH_TOKEN")
TWILIO_FROM_NUMBER = env("TWILIO_FROM_NUMBER")
MIXPANEL_TOKEN = env("MIXPANEL_TOKEN")
MIXPANEL_API_SECRET = env("MIXPANEL_API_SECRET")
# The chat platform signs its delivery acks with it (rooms/providers.py).
ROOMS_CHAT_WEBHOOK_SECRET = required_secret("ROOMS_CHAT_WEBHOOK_SECRET")

SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SESSION_COOKIE_SECURE = True
CSRF_COOKIE_SECURE = True
SECURE_CONTENT_TYPE_NOSNIFF = True
