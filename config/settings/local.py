"""Settings for `platform/run`: every service on loopback, providers in the sandbox."""

from config.env import read_dotenv

read_dotenv()

from config.env import env  # noqa: E402

# Defaults that only make sense on a developer's machine, set before base reads them.
env.ENVIRON.setdefault("DJANGO_SECRET_KEY", "local-only-insecure-key-do-not-use-in-production")
env.ENVIRON.setdefault("DJANGO_DEBUG", "true")
env.ENVIRON.setdefault("DJANGO_ALLOWED_HOSTS", "127.0.0.1,localhost,[::1]")

from config.settings.base import *  # noqa: E402,F403
from config.settings.base import BASE_DIR  # noqa: E402

SANDBOX_URL = env("SANDBOX_URL", default="http://127.0.0.1:8030")
EMAIL_CONFIG = env.email_url("EMAIL_URL", default="smtp://127.0.0.1:1025")
vars().update(EMAIL_CONFIG)
TWILIO_ACCOUNT_SID = env("TWILIO_ACCOUNT_SID", default="AC" + "0" * 32)
TWILIO_AUTH_TOKEN = env("TWILIO_AUTH_TOKEN", default="sandbox-auth-token")
TWILIO_FROM_NUMBER = env("TWILIO_FROM_NUMBER", default="+15005550006")
TWILIO_API_BASE_URL = env("TWILIO_API_BASE_URL", default=SANDBOX_URL)
MIXPANEL_API_SECRET = env("MIXPANEL_API_SECRET", default="sandbox-mixpanel-secret")
MIXPANEL_API_BASE_URL = env("MIXPANEL_API_BASE_URL", default=SANDBOX_URL)
# Email goes by SMTP to the sandbox; POSTMARK_SERVER_TOKEN=sandbox-postmark-token sends it
# through the sandbox's Postmark API instead.
POSTMARK_API_BASE_URL = env("POSTMARK_API_BASE_URL", default=SANDBOX_URL)
ROOMS_CHAT_API_URL = env("ROOMS_CHAT_API_URL", default=SANDBOX_URL)
ROOMS_CHAT_WEBHOOK_SECRET = env("ROOMS_CHAT_WEBHOOK_SECRET", default="sandbox-chat-secret")

# Serve static files straight from the apps: no collectstatic step on a developer machine.
WHITENOISE_USE_FINDERS = True
WHITENOISE_AUTOREFRESH = True
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
}
(BASE_DIR / ".run").mkdir(exist_ok=True)
