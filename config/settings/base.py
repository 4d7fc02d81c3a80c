"""Settings shared by every environment. Environment-specific modules import from here."""

from typing import Any

from kombu import Exchange, Queue

from config.env import BASE_DIR, database_config, env
from rooms.queues import ROOMS_QUEUE, ROOMS_ROUTING_KEY

SECRET_KEY = env("DJANGO_SECRET_KEY")
DEBUG = env.bool("DJANGO_DEBUG", default=False)
ALLOWED_HOSTS = env.list("DJANGO_ALLOWED_HOSTS", default=[])
# The URL providers call back (webhooks). Twilio signs the exact public URL, so behind a
# proxy this is what signatures are checked against, not the URL Django sees.
CARILLON_PUBLIC_URL = env("CARILLON_PUBLIC_URL", default="http://127.0.0.1:8000")

INSTALLED_APPS = [
    # daphne first: it replaces runserver with an ASGI server.
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "rest_framework.authtoken",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "channels",
    "django_celery_beat",
    "anymail",
    "notifications",
    "realtime",
    "rooms",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "config.urls"
ASGI_APPLICATION = "config.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]


DATABASES = {
    "default": database_config(
        env("DATABASE_URL", default=f"sqlite:///{BASE_DIR / '.run' / 'carillon.sqlite3'}")
    )
}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = env("DJANGO_TIME_ZONE", default="UTC")
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "staticfiles"
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"},
}

# --- Brokers -----------------------------------------------------------------------
# Critical notification work runs on RabbitMQ; non-critical scheduled work on Redis
# (../shared/BRIEF.md, decision 3). Redis also carries the Channels layer.
RABBITMQ_URL = env("RABBITMQ_URL", default="amqp://guest:guest@127.0.0.1:5672//")
RABBITMQ_MANAGEMENT_URL = env(
    "RABBITMQ_MANAGEMENT_URL", default="http://guest:guest@127.0.0.1:15672/api/"
)
REDIS_URL = env("REDIS_URL", default="redis://127.0.0.1:6379/0")

# The critical Celery app (config/celery.py) reads CELERY_* settings.
CELERY_BROKER_URL = RABBITMQ_URL
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
# Without confirms a publish during a RabbitMQ memory or disk alarm can vanish silently.
CELERY_BROKER_TRANSPORT_OPTIONS = {"confirm_publish": True}
# Results go back over RabbitMQ; notification tasks record their outcome in the database
# and ignore results, so only diagnostics (carillon.ping) use this.
CELERY_RESULT_BACKEND = "rpc://"
CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_DEFAULT_QUEUE = "carillon.default"
CELERY_TASK_DEFAULT_EXCHANGE = "carillon.tasks"
# Quorum queues do not support direct exchanges for Celery's native delayed delivery.
CELERY_TASK_DEFAULT_EXCHANGE_TYPE = "topic"
CELERY_TASK_DEFAULT_ROUTING_KEY = "carillon.default"
CELERY_TASK_DEFAULT_QUEUE_TYPE = "quorum"
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
# One unacknowledged message per worker process: a killed process hands back at most one.
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TIMEZONE = TIME_ZONE
# Events feed Flower's task views.
CELERY_WORKER_SEND_TASK_EVENTS = True
# Ordered room delivery (rooms/) has its own durable quorum queue on the topic exchange.
CELERY_TASK_QUEUES = [
    Queue(
        CELERY_TASK_DEFAULT_QUEUE,
        Exchange(CELERY_TASK_DEFAULT_EXCHANGE, type="topic"),
        routing_key=CELERY_TASK_DEFAULT_ROUTING_KEY,
        queue_arguments={"x-queue-type": "quorum"},
    ),
    ROOMS_QUEUE,
]
CELERY_TASK_ROUTES = {"rooms.*": {"queue": ROOMS_QUEUE.name, "routing_key": ROOMS_ROUTING_KEY}}
CELERY_TASK_SEND_SENT_EVENT = True

# The background Celery app (config/background.py) reads BACKGROUND_CELERY_* settings.
BACKGROUND_CELERY_BROKER_URL = REDIS_URL
BACKGROUND_CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
BACKGROUND_CELERY_RESULT_BACKEND = REDIS_URL
BACKGROUND_CELERY_TASK_DEFAULT_QUEUE = "background"
BACKGROUND_CELERY_TASK_SERIALIZER = "json"
BACKGROUND_CELERY_ACCEPT_CONTENT = ["json"]
BACKGROUND_CELERY_TIMEZONE = TIME_ZONE
BACKGROUND_CELERY_WORKER_SEND_TASK_EVENTS = True
# Ordered room delivery (rooms/) has its own durable quorum queue on the topic exchange.
CELERY_TASK_QUEUES = [
    Queue(
        CELERY_TASK_DEFAULT_QUEUE,
        Exchange(CELERY_TASK_DEFAULT_EXCHANGE, type="topic"),
        routing_key=CELERY_TASK_DEFAULT_ROUTING_KEY,
        queue_arguments={"x-queue-type": "quorum"},
    ),
    ROOMS_QUEUE,
]
CELERY_TASK_ROUTES = {"rooms.*": {"queue": ROOMS_QUEUE.name, "routing_key": ROOMS_ROUTING_KEY}}
BACKGROUND_CELERY_BEAT_SCHEDULER = "django_celery_beat.schedulers:DatabaseScheduler"

CHANNEL_LAYERS: dict[str, dict[str, Any]] = {
    "default": {
        "BACKEND": "channels_redis.pubsub.RedisPubSubChannelLayer",
        "CONFIG": {"hosts": [REDIS_URL]},
    }
}

# --- API ---------------------------------------------------------------------------
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "rest_framework.authentication.TokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
}
SPECTACULAR_SETTINGS = {
    "TITLE": "Carillon API",
    "DESCRIPTION": "Publish domain events and read their deliveries.",
    "VERSION": "0.1.0",
    "SERVE_INCLUDE_SCHEMA": False,
    # Swagger UI assets are served locally: no CDN is assumed reachable.
    "SWAGGERUI_DIST": "SIDECAR",
    "SWAGGERUI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
}

# --- Providers ---------------------------------------------------------------------
DEFAULT_FROM_EMAIL = env("DEFAULT_FROM_EMAIL", default="Carillon <noreply@carillon.local>")
TWILIO_ACCOUNT_SID = env("TWILIO_ACCOUNT_SID", default="")
TWILIO_AUTH_TOKEN = env("TWILIO_AUTH_TOKEN", default="")
TWILIO_FROM_NUMBER = env("TWILIO_FROM_NUMBER", default="")
# Empty means Twilio itself; local and test settings point it at the provider sandbox.
TWILIO_API_BASE_URL = env("TWILIO_API_BASE_URL", default="")
MIXPANEL_TOKEN = env("MIXPANEL_TOKEN", default="")
MIXPANEL_API_SECRET = env("MIXPANEL_API_SECRET", default="")
MIXPANEL_API_BASE_URL = env("MIXPANEL_API_BASE_URL", default="")
# The chat platform of ordered room delivery (rooms/): its API and the webhook secret it
# signs acks with. Local and test settings point the API at the provider sandbox.
ROOMS_CHAT_API_URL = env("ROOMS_CHAT_API_URL", default="")
ROOMS_CHAT_WEBHOOK_SECRET = env("ROOMS_CHAT_WEBHOOK_SECRET", default="")
ROOMS_CHAT_API_TIMEOUT_S = env.float("ROOMS_CHAT_API_TIMEOUT_S", default=10.0)

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"},
    },
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": env("DJANGO_LOG_LEVEL", default="INFO")},
}
