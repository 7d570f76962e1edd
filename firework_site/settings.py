"""Django settings for the Firework control plane, read from environment variables.

Without any variable set, the control plane runs on this machine alone: SQLite in
``var/``, Celery tasks in-process, the site on 127.0.0.1. Every variable is read
below; secrets may also come from a file named by ``<NAME>_FILE``.

The object store (``FIREWORK_STORE``, ``FIREWORK_STORE_DIR``, ``S3_*``,
``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``) is not configured here:
``controlplane.objectstore.store_from_env(os.environ)`` reads those variables where
a store is needed (the enrich command, the dashboard, Celery tasks).
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any

import django_stubs_ext

from controlplane.envvars import (
    env_bool,
    env_choice,
    env_int,
    env_list,
    env_secret,
    env_str,
    parse_database_url,
)
from firework_site.secretfiles import only_loopback, secret_key

# Lets admin and other generic classes be subscripted at run time, as typed.
django_stubs_ext.monkeypatch()

BASE_DIR = Path(__file__).resolve().parent.parent

# Generated secrets and the default SQLite database live here; keep it private.
FIREWORK_VAR_DIR = Path(env_str("FIREWORK_VAR_DIR", str(BASE_DIR / "var")))

DEBUG = env_bool("DEBUG", False)
ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", ["127.0.0.1", "localhost"])
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS")

SECRET_KEY = secret_key(
    os.environ,
    may_generate=(
        DEBUG
        or only_loopback(ALLOWED_HOSTS)
        or env_bool("FIREWORK_GENERATE_SECRET_KEY", False)
    ),
    path=FIREWORK_VAR_DIR / "secret_key",
)

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "rest_framework.authtoken",
    "drf_spectacular",
    "drf_spectacular_sidecar",  # Swagger UI assets served locally, no CDN
    "controlplane",
]

MIDDLEWARE = [
    # first, so the times it records for /metrics include every other middleware
    "controlplane.metrics.RequestMetricsMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "firework_site.urls"
WSGI_APPLICATION = "firework_site.wsgi.application"

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


def _default_database_url() -> str:
    FIREWORK_VAR_DIR.mkdir(mode=0o700, parents=True, exist_ok=True)
    return f"sqlite:///{FIREWORK_VAR_DIR / 'firework.sqlite3'}"


# DATABASE_URL may carry a password, hence DATABASE_URL_FILE as well.
DATABASES: dict[str, dict[str, Any]] = {
    "default": parse_database_url(
        env_secret("DATABASE_URL") or _default_database_url(), base_dir=BASE_DIR
    )
}
DATABASES["default"]["CONN_MAX_AGE"] = env_int("DATABASE_CONN_MAX_AGE", 0)
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": f"django.contrib.auth.password_validation.{name}"}
    for name in (
        "UserAttributeSimilarityValidator",
        "MinimumLengthValidator",
        "CommonPasswordValidator",
        "NumericPasswordValidator",
    )
]
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "controlplane:index"
LOGOUT_REDIRECT_URL = "login"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = False
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = FIREWORK_VAR_DIR / "static"
STATICFILES_DIRS = [BASE_DIR / "static"]
# WhiteNoise serves static files from any WSGI server (gunicorn in the image);
# finding them in place means `collectstatic` is an optimisation, not a must.
WHITENOISE_USE_FINDERS = True
# WhiteNoise warns on every start when STATIC_ROOT is missing; an empty one is fine.
with contextlib.suppress(OSError):
    STATIC_ROOT.mkdir(parents=True, exist_ok=True)

# Celery: without a broker, tasks run in the calling process, so a local run
# (`make run`) needs no Redis; a directory broker (below) needs none either.
# Tasks record their runs in the database either way.
CELERY_BROKER_URL = env_secret("CELERY_BROKER_URL") or "memory://"
CELERY_TASK_ALWAYS_EAGER = CELERY_BROKER_URL == "memory://"
CELERY_TASK_EAGER_PROPAGATES = True
CELERY_RESULT_BACKEND = env_secret("CELERY_RESULT_BACKEND") or None
CELERY_TIMEZONE = TIME_ZONE
CELERY_TASK_ACKS_LATE = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
# filesystem://: a broker that is a directory, so a Celery worker takes the
# runs off the web process without Redis (`make run` starts one when it is set).
# Web and worker must share FIREWORK_VAR_DIR.
if CELERY_BROKER_URL.startswith("filesystem://"):
    _broker_dir = FIREWORK_VAR_DIR / "broker"
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(_broker_dir / "queue"),
        "data_folder_out": str(_broker_dir / "queue"),
        "control_folder": str(_broker_dir / "control"),
    }
    for _folder in ("queue", "control"):
        with contextlib.suppress(OSError):
            (_broker_dir / _folder).mkdir(mode=0o700, parents=True, exist_ok=True)

# The REST API: tokens for automation, the session for the browser. Reading needs
# a login; writing needs an operator (controlplane.api.permissions).
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "rest_framework.authentication.TokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
        # last: a node token on a users' endpoint is a 403, not "no credentials"
        "controlplane.api.nodebearer.NodeCredentialsRefused",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_PAGINATION_CLASS": "rest_framework.pagination.PageNumberPagination",
    "PAGE_SIZE": 50,
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
}
SPECTACULAR_SETTINGS = {
    "TITLE": "Firework control plane API",
    "DESCRIPTION": "Config repositories, enrichment runs and published node configs.",
    "VERSION": "1",
    "SERVE_INCLUDE_SCHEMA": False,
    "SERVE_PERMISSIONS": ["rest_framework.permissions.IsAuthenticated"],
    # operation ids like repositories_list, tagged by resource, not "v1"
    "SCHEMA_PATH_PREFIX": r"/api/v[0-9]+",
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
}

# The GitHub webhook refuses larger bodies before reading them.
FIREWORK_WEBHOOK_MAX_BYTES = env_int("FIREWORK_WEBHOOK_MAX_BYTES", 5 * 1024 * 1024)
# Enrichment runs: attempts and backoff for transient Git/store errors, and how
# soon a run waiting for its repository (another run holds it) tries again.
FIREWORK_RUN_MAX_ATTEMPTS = env_int("FIREWORK_RUN_MAX_ATTEMPTS", 5)
FIREWORK_RUN_RETRY_BASE_SECONDS = env_int("FIREWORK_RUN_RETRY_BASE_SECONDS", 2)
FIREWORK_RUN_RETRY_MAX_SECONDS = env_int("FIREWORK_RUN_RETRY_MAX_SECONDS", 120)
FIREWORK_RUN_BUSY_RETRY_SECONDS = env_int("FIREWORK_RUN_BUSY_RETRY_SECONDS", 2)
# Cached clones of config repositories, fetched incrementally by the worker.
FIREWORK_GIT_CACHE_DIR = Path(
    env_str("FIREWORK_GIT_CACHE_DIR", str(FIREWORK_VAR_DIR / "git"))
)

# /metrics: served to loopback (unless this is off), to logged-in users, and to
# scrapers sending "Authorization: Bearer <FIREWORK_METRICS_TOKEN>".
FIREWORK_METRICS_TOKEN = env_secret("FIREWORK_METRICS_TOKEN")
FIREWORK_METRICS_LOOPBACK = env_bool("FIREWORK_METRICS_LOOPBACK", True)
# Agents' status reports: the largest accepted, and the heartbeat a node is
# judged by (stale after 3 missed ones; the agent's heartbeat_interval is 30 s).
FIREWORK_NODE_REPORT_MAX_BYTES = env_int("FIREWORK_NODE_REPORT_MAX_BYTES", 256 * 1024)
FIREWORK_NODE_HEARTBEAT_SECONDS = env_int("FIREWORK_NODE_HEARTBEAT_SECONDS", 30)

# Request bodies read into memory. Enough for a GitHub push payload of many
# commits; the webhook view applies its own, explicit cap before reading.
DATA_UPLOAD_MAX_MEMORY_SIZE = env_int("DATA_UPLOAD_MAX_MEMORY_SIZE", 2 * 1024 * 1024)

# Headers and cookies. The SECURE_* and *_COOKIE_SECURE switches are off by
# default because a local run is plain HTTP; turn them on behind TLS.
X_FRAME_OPTIONS = "DENY"
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
SESSION_COOKIE_HTTPONLY = True
CSRF_COOKIE_HTTPONLY = True  # no script of ours reads it
SESSION_COOKIE_SECURE = env_bool("SESSION_COOKIE_SECURE", False)
CSRF_COOKIE_SECURE = env_bool("CSRF_COOKIE_SECURE", False)
SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", False)
# Scrapers and load balancers probe these over plain HTTP inside the network;
# a redirect would only break them (/metrics checks its own callers).
SECURE_REDIRECT_EXEMPT = [r"^metrics$", r"^healthz$"]
SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", 0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", False)
if env_bool("SECURE_PROXY_SSL_HEADER", False):
    # Only behind a proxy that sets this header itself; clients could forge it.
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")

FIREWORK_LOG_LEVEL = env_choice(
    "FIREWORK_LOG_LEVEL", ["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"], "INFO"
)
LOGGING: dict[str, Any] = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"},
    },
    "handlers": {
        "console": {"class": "logging.StreamHandler", "formatter": "plain"},
    },
    "root": {"handlers": ["console"], "level": FIREWORK_LOG_LEVEL},
    "loggers": {
        # SQL at DEBUG would flood the log and may show parameter values.
        "django.db.backends": {"level": "INFO"},
    },
}
