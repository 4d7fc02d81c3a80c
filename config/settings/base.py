"""Settings shared by every environment. Environment-specific modules import from here."""

from typing import Any

from config.env import (
    BASE_DIR,
    celery_redis_url,
    channel_layer_host,
    database_config,
    env,
    redis_sentinels,
)

SECRET_KEY = env("DJANGO_SECRET_KEY")
DEBUG = env.bool("DJANGO_DEBUG", default=False)
ALLOWED_HOSTS = env.list("DJANGO_ALLOWED_HOSTS", default=[])
# The URL providers call back (webhooks). Twilio signs the exact public URL, so behind a
# proxy this is what signatures are checked against, not the URL Django sees.
CARILLON_PUBLIC_URL = env("CARILLON_PUBLIC_URL", default="http://127.0.0.1:8000")

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "core",
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
    "benchmarks",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "core.csp.ContentSecurityPolicyMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    # Above CommonMiddleware: a slashless /api/ URL gets a JSON 404, not APPEND_SLASH's redirect.
    "core.middleware.ApiErrorMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    # After authentication: a session user's requests count against the user.
    "core.throttling.ThrottleMiddleware",
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
# One node, or every node of a cluster separated by ";" ("amqp://…@mq1//;amqp://…@mq2//"):
# kombu connects to the first that answers and, when that one is lost, goes on to the
# next (docs/operations.md, "The cluster layout").
RABBITMQ_URL = env("RABBITMQ_URL", default="amqp://guest:guest@127.0.0.1:5672//")
RABBITMQ_MANAGEMENT_URL = env(
    "RABBITMQ_MANAGEMENT_URL", default="http://guest:guest@127.0.0.1:15672/api/"
)
REDIS_URL = env("REDIS_URL", default="redis://127.0.0.1:6379/0")
# Redis with failover: the Sentinels ("host:port,host:port,…") that watch the primary
# named REDIS_SENTINEL_MASTER. When set, every Redis client asks them where the primary
# is (core/redis.py) and REDIS_URL gives only the database number and password.
REDIS_SENTINELS = redis_sentinels(env.list("REDIS_SENTINELS", default=[]))
REDIS_SENTINEL_MASTER = env("REDIS_SENTINEL_MASTER", default="carillon")

# The critical Celery app (config/celery.py) reads CELERY_* settings.
CELERY_BROKER_URL = RABBITMQ_URL
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
# With several nodes in RABBITMQ_URL, try them in the order given, moving to the next on
# a connection error (kombu's default, said here so that no release's default decides).
CELERY_BROKER_FAILOVER_STRATEGY = "round-robin"
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
# Only the declared queues (notifications/queues.py): a task sent to any other queue
# name, such as the background app's, raises QueueNotFound instead of creating it here.
CELERY_TASK_CREATE_MISSING_QUEUES = False
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
# Unacknowledged messages per worker process: what a transactional worker may take
# together in one batch when it falls behind (notifications/tasks/together.py). Broadcast
# workers take one at a time (`--prefetch-multiplier 1`, platform/Procfile): a chunk is
# long, and another worker should get the next one.
CELERY_WORKER_PREFETCH_MULTIPLIER = 16
CELERY_TASK_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TIMEZONE = TIME_ZONE
# Events feed Flower's task views; the worker sends them without publisher confirms
# (config/worker.py). No "sent" event: it was one more confirmed publish beside every task
# published (a web request's fast path waited for it), and Flower shows a task from the
# moment a worker receives it.
CELERY_WORKER_SEND_TASK_EVENTS = True
CELERY_WORKER_CONSUMER = "config.worker:CriticalConsumer"
# A critical worker waits for its broker however long it is away (it tries every 5 s at
# most, config/worker.py) rather than exit after Celery's 100 attempts.
CELERY_BROKER_CONNECTION_MAX_RETRIES = None
CELERY_WORKER_POOL = "config.worker:CheckedTaskPool"
CELERY_TASK_ROUTES: dict[str, dict[str, str]] = {}

# The background Celery app (config/background.py) reads BACKGROUND_CELERY_* settings.
BACKGROUND_CELERY_BROKER_URL = celery_redis_url(REDIS_URL, REDIS_SENTINELS)
BACKGROUND_CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
# Waits for Redis however long it is away (trying at most every 30 s, kombu's default),
# rather than exit after Celery's 100 attempts and take platform/run's processes with it.
BACKGROUND_CELERY_BROKER_CONNECTION_MAX_RETRIES = None
BACKGROUND_CELERY_RESULT_BACKEND = BACKGROUND_CELERY_BROKER_URL
# Through Sentinel, kombu and Celery's result backend need the name of the primary.
BACKGROUND_CELERY_BROKER_TRANSPORT_OPTIONS = {"master_name": REDIS_SENTINEL_MASTER} if REDIS_SENTINELS else {}
BACKGROUND_CELERY_RESULT_BACKEND_TRANSPORT_OPTIONS = BACKGROUND_CELERY_BROKER_TRANSPORT_OPTIONS
BACKGROUND_CELERY_TASK_IGNORE_RESULT = True  # scheduled jobs: nobody waits for a result
BACKGROUND_CELERY_TASK_DEFAULT_QUEUE = "background"
BACKGROUND_CELERY_TASK_CREATE_MISSING_QUEUES = False
BACKGROUND_CELERY_TASK_SERIALIZER = "json"
BACKGROUND_CELERY_ACCEPT_CONTENT = ["json"]
BACKGROUND_CELERY_TIMEZONE = TIME_ZONE
BACKGROUND_CELERY_WORKER_SEND_TASK_EVENTS = True
# Results of background jobs are diagnostics only: a day is plenty.
BACKGROUND_CELERY_RESULT_EXPIRES = 24 * 3600
# django-celery-beat's DatabaseScheduler (schedules editable in the admin) holding a Redis
# lock, so that a second beat started by mistake waits instead of sending everything twice.
BACKGROUND_CELERY_BEAT_SCHEDULER = "config.beat:LockedDatabaseScheduler"
# Save each entry's last run right after it is sent: a beat taking over from one that
# died reads it from the database and does not send the same run again.
BACKGROUND_CELERY_BEAT_SYNC_EVERY = 1
# A beat that does not renew its lock within this many seconds is presumed dead and the
# waiting one takes over. Renewed at every tick (at most 5 s apart), so well above that.
CARILLON_BEAT_LOCK_TIMEOUT_SECONDS = env.float("CARILLON_BEAT_LOCK_TIMEOUT_SECONDS", default=30.0)
CARILLON_BEAT_LOCK_KEY = env("CARILLON_BEAT_LOCK_KEY", default="carillon:beat:lock")

CHANNEL_LAYERS: dict[str, dict[str, Any]] = {
    "default": {
        "BACKEND": "channels_redis.pubsub.RedisPubSubChannelLayer",
        "CONFIG": {"hosts": [channel_layer_host(REDIS_URL, REDIS_SENTINELS, REDIS_SENTINEL_MASTER)]},
    }
}

# --- Realtime (docs/realtime.md) ------------------------------------------------------
REALTIME_REDIS_URL = env("REALTIME_REDIS_URL", default=REDIS_URL)
# Resume window per topic: the last N messages, none older than this.
REALTIME_HISTORY_MAX_LENGTH = env.int("REALTIME_HISTORY_MAX_LENGTH", default=1000)
REALTIME_HISTORY_MAX_AGE_SECONDS = env.int("REALTIME_HISTORY_MAX_AGE_SECONDS", default=3600)
# A published message, encoded: each subscriber receives it and the history keeps it.
REALTIME_MAX_MESSAGE_BYTES = env.int("REALTIME_MAX_MESSAGE_BYTES", default=16 * 1024)
# Well under the 60 s idle timeout common to proxies and NATs.
REALTIME_HEARTBEAT_SECONDS = env.float("REALTIME_HEARTBEAT_SECONDS", default=25.0)
# Frames queued per connection before a client that does not read is disconnected.
REALTIME_CONNECTION_BUFFER = env.int("REALTIME_CONNECTION_BUFFER", default=256)
REALTIME_TOKEN_MAX_AGE_SECONDS = env.int("REALTIME_TOKEN_MAX_AGE_SECONDS", default=60)
REALTIME_SSE_RETRY_MS = env.int("REALTIME_SSE_RETRY_MS", default=2000)
# A connection counts as present this long after its last heartbeat (process crashes).
REALTIME_PRESENCE_TTL_SECONDS = env.float(
    "REALTIME_PRESENCE_TTL_SECONDS", default=3 * REALTIME_HEARTBEAT_SECONDS
)
# Offline is announced only after this long without any connection (flapping mobiles).
REALTIME_PRESENCE_GRACE_SECONDS = env.float("REALTIME_PRESENCE_GRACE_SECONDS", default=5.0)

# --- API ---------------------------------------------------------------------------
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "rest_framework.authentication.TokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_SCHEMA_CLASS": "core.schema.AutoSchema",
    "EXCEPTION_HANDLER": "core.errors.api_exception_handler",
    # JSON bodies through one parser that makes any malformed body a 400 (form-encoded
    # ones too). No multipart: nothing here takes files, and daphne's HTTP server answers
    # a malformed multipart body with a bare 400 before Carillon sees it.
    # Every answer is JSON: people browse the API at /api/docs/, not DRF's HTML renderer.
    "DEFAULT_PARSER_CLASSES": ["core.parsers.JSONParser", "rest_framework.parsers.FormParser"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_PAGINATION_CLASS": "rest_framework.pagination.PageNumberPagination",
    "PAGE_SIZE": 20,
}
SPECTACULAR_SETTINGS = {
    "TITLE": "Carillon API",
    "DESCRIPTION": (
        "Publish domain events and read their deliveries. Every error answers "
        '{"error": code, "message": text, "detail": object} (docs/api.md).'
    ),
    "VERSION": "0.1.0",
    "SERVE_INCLUDE_SCHEMA": False,
    # Swagger UI assets are served locally: no CDN is assumed reachable.
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    # The SSE stream and Twilio's callback are plain Django views: core.schema adds them.
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        "core.schema.add_plain_views",
    ],
}

# --- Security (docs/operations.md, "Rate limits" and "Production security") ----------
# Rate limits (core/throttling.py): COUNT/[N]UNIT, counted in Redis so that every web
# process shares them. Failure scopes lock out after COUNT failures in the window; the
# others refuse the requests past COUNT in the window ("webhook" counts only the webhooks
# that fail their signature: a provider's own are never refused). Defaults sit far above
# what the test suite and `manage.py bench` send (the benchmarks publish in-process), so
# only tests that lower a rate on purpose meet them.
CARILLON_THROTTLE_RATES = {
    "login_username": env("CARILLON_THROTTLE_LOGIN_USERNAME", default="5/15m"),
    "login_address": env("CARILLON_THROTTLE_LOGIN_ADDRESS", default="20/15m"),
    "credential_failures": env("CARILLON_THROTTLE_CREDENTIAL_FAILURES", default="30/10m"),
    "publish": env("CARILLON_THROTTLE_PUBLISH", default="6000/m"),
    "realtime_token": env("CARILLON_THROTTLE_REALTIME_TOKEN", default="600/m"),
    "webhook": env("CARILLON_THROTTLE_WEBHOOK", default="300/10m"),
}
# URL name (namespace:name) -> the scope its requests count in.
CARILLON_THROTTLE_VIEWS = {
    "admin:login": "login",
    "realtime-login": "login",
    "event-list": "publish",
    "realtime-publish": "publish",
    "room-messages": "publish",
    "realtime-token": "realtime_token",
    "twilio-status-callback": "webhook",
    "chat-webhook": "webhook",
}
CARILLON_THROTTLE_REDIS_URL = env("CARILLON_THROTTLE_REDIS_URL", default=REDIS_URL)
# Proxies in front of daphne that append to X-Forwarded-For (0: clients connect directly).
# Rate limits count per client address: behind a proxy REMOTE_ADDR is the proxy's.
CARILLON_TRUSTED_PROXIES = env.int("CARILLON_TRUSTED_PROXIES", default=0)
# Scripts only from Carillon itself (the /live/ page's script is a static file). Inline
# styles are allowed: the admin's change list and Swagger UI's page carry <style> blocks,
# and a style cannot run code. connect-src 'self' covers same-origin ws:/wss: (CSP 3).
CARILLON_CONTENT_SECURITY_POLICY = env(
    "CARILLON_CONTENT_SECURITY_POLICY",
    default=(
        "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
        "img-src 'self' data:; connect-src 'self'; object-src 'none'; base-uri 'self'; "
        "form-action 'self'; frame-ancestors 'none'"
    ),
)
# The OpenAPI schema and Swagger UI at /api/schema/ and /api/docs/ (production: off).
CARILLON_API_DOCS_ENABLED = env.bool("CARILLON_API_DOCS_ENABLED", default=True)

# --- Providers ---------------------------------------------------------------------
DEFAULT_FROM_EMAIL = env("DEFAULT_FROM_EMAIL", default="Carillon <noreply@carillon.local>")
# Each SMTP command waits this long at most. Without it (Django's default) a server that
# stops answering, or a kept session whose network path died without a word, holds a
# worker process for as long as TCP takes to give up; with it the send is retried.
EMAIL_TIMEOUT = env.float("EMAIL_TIMEOUT", default=30.0)
TWILIO_ACCOUNT_SID = env("TWILIO_ACCOUNT_SID", default="")
TWILIO_AUTH_TOKEN = env("TWILIO_AUTH_TOKEN", default="")
TWILIO_FROM_NUMBER = env("TWILIO_FROM_NUMBER", default="")
# Empty means Twilio itself; local and test settings point it at the provider sandbox.
TWILIO_API_BASE_URL = env("TWILIO_API_BASE_URL", default="")
MIXPANEL_API_SECRET = env("MIXPANEL_API_SECRET", default="")
MIXPANEL_API_BASE_URL = env("MIXPANEL_API_BASE_URL", default="")
# Email deliveries and digests go through Postmark's batch API when its server token is
# set (a broadcast chunk's emails in a request per 500), through EMAIL_BACKEND otherwise
# (SMTP, or another ESP by django-anymail). Streams: Postmark keeps broadcasts (events of
# the bulk lane) apart from transactional mail.
POSTMARK_SERVER_TOKEN = env("POSTMARK_SERVER_TOKEN", default="")
POSTMARK_API_BASE_URL = env("POSTMARK_API_BASE_URL", default="")
POSTMARK_TRANSACTIONAL_STREAM = env("POSTMARK_TRANSACTIONAL_STREAM", default="outbound")
POSTMARK_BROADCAST_STREAM = env("POSTMARK_BROADCAST_STREAM", default="broadcast")
# The chat platform of ordered room delivery (rooms/): its API and the webhook secret it
# signs acks with. Local and test settings point the API at the provider sandbox.
ROOMS_CHAT_API_URL = env("ROOMS_CHAT_API_URL", default="")
ROOMS_CHAT_WEBHOOK_SECRET = env("ROOMS_CHAT_WEBHOOK_SECRET", default="")
ROOMS_CHAT_API_TIMEOUT_SECONDS = env.float("ROOMS_CHAT_API_TIMEOUT_SECONDS", default=10.0)

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"},
    },
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": env("DJANGO_LOG_LEVEL", default="INFO")},
}

# --- Notifications -----------------------------------------------------------------
# Redeliveries of one message before RabbitMQ dead-letters it (quorum x-delivery-limit):
# a message that kills its worker each time ends in the dead-letter queue, not a loop.
CARILLON_DELIVERY_LIMIT = env.int("CARILLON_DELIVERY_LIMIT", default=5)
# Transactional deliveries a worker sends together at most, when it holds that many.
CARILLON_DELIVERY_BATCH_MAX = env.int("CARILLON_DELIVERY_BATCH_MAX", default=50)
# Retries of a transient provider error: exponential backoff from this base, with jitter.
CARILLON_DELIVERY_MAX_RETRIES = env.int("CARILLON_DELIVERY_MAX_RETRIES", default=6)
CARILLON_RETRY_BACKOFF_SECONDS = env.int("CARILLON_RETRY_BACKOFF_SECONDS", default=2)
CARILLON_RETRY_BACKOFF_MAX_SECONDS = env.int("CARILLON_RETRY_BACKOFF_MAX_SECONDS", default=600)
# The largest event the API takes (request body); larger ones get 413.
CARILLON_MAX_EVENT_BYTES = env.int("CARILLON_MAX_EVENT_BYTES", default=64 * 1024)
# How long whoever claimed a row holds it before another may take it: an outbox row (its
# publisher), an analytics delivery (its batch flush), a digest (its sender).
CARILLON_CLAIM_LEASE_SECONDS = env.int("CARILLON_CLAIM_LEASE_SECONDS", default=30)
# Analytics deliveries go to Mixpanel in batches of up to this many events per request.
CARILLON_ANALYTICS_BATCH_SIZE = env.int("CARILLON_ANALYTICS_BATCH_SIZE", default=50)
# Modules that declare more event types and subscribers (imported at start-up).
# Recipients per chunk of a broadcast: one task, one bulk insert, one SMTP connection
# or provider batch each. Larger chunks cost less per delivery; smaller ones retry less.
CARILLON_BROADCAST_CHUNK_SIZE = env.int("CARILLON_BROADCAST_CHUNK_SIZE", default=500)
# SMS requests in flight at once per chunk (Twilio has no batch endpoint).
CARILLON_SMS_CONCURRENCY = env.int("CARILLON_SMS_CONCURRENCY", default=8)
# Sends per second per channel, shared by every worker (a token bucket in Redis), to stay
# under the provider account's limit: e.g. CARILLON_SEND_RATES=sms=10,email=100. A channel
# not named is not paced; a provider's 429 pauses every sender anyway.
CARILLON_SEND_RATES = {
    channel: float(per_second) for channel, per_second in env.dict("CARILLON_SEND_RATES", default={}).items()
}
# An SMTP 421 (the server busy or over its rate, closing the connection) pauses email
# this long (every worker when email has a send rate): SMTP has no Retry-After.
CARILLON_SMTP_BUSY_PAUSE_SECONDS = env.float("CARILLON_SMTP_BUSY_PAUSE_SECONDS", default=10.0)
CARILLON_SUBSCRIBER_MODULES = env.list("CARILLON_SUBSCRIBER_MODULES", default=[])
# How long a new analytics delivery waits for others to share its request (0: no wait;
# a full batch never waits). Analytics are not user-facing: a second buys many events
# per request under load.
CARILLON_ANALYTICS_BATCH_WINDOW_SECONDS = env.int("CARILLON_ANALYTICS_BATCH_WINDOW_SECONDS", default=1)
# Bearer token Prometheus presents to GET /metrics (empty: staff logins only).
CARILLON_METRICS_TOKEN = env("CARILLON_METRICS_TOKEN", default="")

# --- Background jobs (docs/operations.md, "Scheduled jobs") ---------------------------
# Digest emails: periods end at midnight in this zone (a week ends on Monday).
CARILLON_DIGEST_TIME_ZONE = env("CARILLON_DIGEST_TIME_ZONE", default=TIME_ZONE)
# Clean-up retention, in days; only finished work is ever removed.
CARILLON_RETENTION_DELIVERY_DAYS = env.int("CARILLON_RETENTION_DELIVERY_DAYS", default=30)
CARILLON_RETENTION_OUTBOX_DAYS = env.int("CARILLON_RETENTION_OUTBOX_DAYS", default=7)
CARILLON_RETENTION_READ_NOTIFICATION_DAYS = env.int("CARILLON_RETENTION_READ_NOTIFICATION_DAYS", default=90)
# Rows deleted per statement, and statements per run: a run stays short and never holds
# long locks; what is left goes at the next run.
CARILLON_CLEANUP_BATCH_SIZE = env.int("CARILLON_CLEANUP_BATCH_SIZE", default=1000)
CARILLON_CLEANUP_MAX_BATCHES = env.int("CARILLON_CLEANUP_MAX_BATCHES", default=50)
