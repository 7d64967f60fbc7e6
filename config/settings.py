"""Settings for the mm-orch control plane.

Every value comes from an environment variable with an embedded default that runs the
platform on one machine (SQLite under var/, no Redis). `.env.example` documents each one.
Production (MMORCH_ENV=production) refuses to start without a real secret key.
"""

from __future__ import annotations

import ipaddress
from decimal import Decimal
from pathlib import Path

import environ
from django.core.exceptions import ImproperlyConfigured

from core.redis_url import SCHEMES, RedisUrlError, celery_broker, parse_redis_url
from wire.logs import logging_config

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = BASE_DIR / "var"

env = environ.Env()
_env_file = BASE_DIR / ".env"
if _env_file.exists():
    env.read_env(str(_env_file))

MMORCH_ENV: str = env.str("MMORCH_ENV", default="development")
IS_PRODUCTION = MMORCH_ENV == "production"

_DEV_SECRET = "dev-insecure-secret-key-do-not-use-in-production-0123456789"  # noqa: S105
SECRET_KEY: str = env.str("DJANGO_SECRET_KEY", default=_DEV_SECRET)
# Old keys still accepted for sessions and signed tokens while DJANGO_SECRET_KEY rotates.
SECRET_KEY_FALLBACKS: list[str] = env.list("DJANGO_SECRET_KEY_FALLBACKS", default=[])
if IS_PRODUCTION and (SECRET_KEY == _DEV_SECRET or len(SECRET_KEY) < 32):
    raise ImproperlyConfigured("DJANGO_SECRET_KEY must be set to a random value of 32+ characters in production")

DEBUG: bool = env.bool("DJANGO_DEBUG", default=not IS_PRODUCTION)
ALLOWED_HOSTS: list[str] = env.list("DJANGO_ALLOWED_HOSTS", default=["127.0.0.1", "localhost", "testserver"])
CSRF_TRUSTED_ORIGINS: list[str] = env.list("DJANGO_CSRF_TRUSTED_ORIGINS", default=[])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.humanize",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "rest_framework",
    "drf_spectacular",
    "axes",
    "tenants",
    "gateway",
    "billing",
    "frontend",
]

MIDDLEWARE = [
    "core.observability.RequestIdMiddleware",
    "core.observability.MetricsMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "csp.middleware.CSPMiddleware",
    "axes.middleware.AxesMiddleware",
    "core.middleware.NotFoundMiddleware",
]

ROOT_URLCONF = "config.urls"
WSGI_APPLICATION = "config.wsgi.application"
ASGI_APPLICATION = "config.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
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

# --- database and cache ---------------------------------------------------------------
DATABASES = {"default": env.db("DATABASE_URL", default=f"sqlite:///{VAR_DIR / 'db.sqlite3'}")}
DATABASES["default"]["CONN_MAX_AGE"] = env.int("DATABASE_CONN_MAX_AGE", default=0)
# PostgreSQL connections come from a pool per process (psycopg 3's, through Django), so however many
# threads ask, a process holds at most DATABASE_POOL_MAX_SIZE connections and waits up to
# DATABASE_POOL_TIMEOUT_S for one. Behind PgBouncer in transaction mode (DATABASE_PGBOUNCER=true)
# server-side cursors are off and the pool is off unless DATABASE_POOL asks for a small one.
# Prepared statements stay off (Django's default for psycopg 3), which PgBouncer needs too.
DATABASE_PGBOUNCER: bool = env.bool("DATABASE_PGBOUNCER", default=False)
DATABASE_POOL: bool = env.bool("DATABASE_POOL", default=not DATABASE_PGBOUNCER)
DATABASE_POOL_MIN_SIZE: int = env.int("DATABASE_POOL_MIN_SIZE", default=1)
DATABASE_POOL_MAX_SIZE: int = env.int("DATABASE_POOL_MAX_SIZE", default=8)
DATABASE_POOL_TIMEOUT_S: float = env.float("DATABASE_POOL_TIMEOUT_S", default=3.0)
if DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql":
    DATABASES["default"]["DISABLE_SERVER_SIDE_CURSORS"] = DATABASE_PGBOUNCER
    if DATABASE_POOL:
        if DATABASES["default"]["CONN_MAX_AGE"]:
            raise ImproperlyConfigured("DATABASE_CONN_MAX_AGE must be 0 with DATABASE_POOL (the pool keeps them)")
        if not 0 <= DATABASE_POOL_MIN_SIZE <= DATABASE_POOL_MAX_SIZE or DATABASE_POOL_MAX_SIZE < 1:
            raise ImproperlyConfigured("DATABASE_POOL_MIN_SIZE must be between 0 and DATABASE_POOL_MAX_SIZE (>= 1)")
        DATABASES["default"].setdefault("OPTIONS", {})["pool"] = {
            "min_size": DATABASE_POOL_MIN_SIZE,
            "max_size": DATABASE_POOL_MAX_SIZE,
            "timeout": DATABASE_POOL_TIMEOUT_S,
            "name": "default",
        }
# Keys' last_used_at (tenants/keyuse.py): each process pushes its notes (to Redis, else the database)
# this often; beat writes Redis's to the database this often, this many keys per statement.
TENANTS_KEY_MARKS_PUSH_S: float = env.float("TENANTS_KEY_MARKS_PUSH_S", default=2.0)
TENANTS_KEY_MARKS_FLUSH_S: float = env.float("TENANTS_KEY_MARKS_FLUSH_S", default=30.0)
TENANTS_KEY_MARKS_BATCH: int = env.int("TENANTS_KEY_MARKS_BATCH", default=1000)
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # WAL lets the web server, the worker and beat share the embedded database.
    DATABASES["default"]["OPTIONS"] = {
        "timeout": 20,
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        "transaction_mode": "IMMEDIATE",
    }

# REDIS_URL: redis://, rediss:// (TLS), redis+sentinel://, redis+cluster:// (core/redis_url.py has
# the forms). Checked here, so a URL nothing can use stops the start instead of failing each request.
REDIS_URL: str = env.str("REDIS_URL", default="")
# Django's cache: REDIS_URL unless a Cluster (RedisCache cannot spread over slots).
CACHE_REDIS_URL: str = env.str("CACHE_REDIS_URL", default=REDIS_URL)
for _name, _url in (("REDIS_URL", REDIS_URL), ("CACHE_REDIS_URL", CACHE_REDIS_URL)):
    try:
        _target = parse_redis_url(_url) if _url else None
    except RedisUrlError as exc:
        raise ImproperlyConfigured(f"{_name}: {exc}") from None
    if _name == "CACHE_REDIS_URL" and _target is not None:
        if _target.mode == "cluster":
            raise ImproperlyConfigured(
                "Django's cache cannot use a Redis Cluster (CACHE_REDIS_URL defaults to REDIS_URL): "
                "set CACHE_REDIS_URL to a standalone (redis://, rediss://) or Sentinel (redis+sentinel://) Redis"
            )
        # Sentinel: a pool that asks the sentinels for the master (redis-py's SentinelConnectionPool).
        _options = {"pool_class": "core.redis_url.SentinelPool"} if _target.mode == "sentinel" else {}
        CACHES = {
            "default": {
                "BACKEND": "django.core.cache.backends.redis.RedisCache",
                "LOCATION": _url,
                "OPTIONS": _options,
            }
        }
if not CACHE_REDIS_URL:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
AUTH_USER_MODEL = "tenants.User"

AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",
    "django.contrib.auth.backends.ModelBackend",
]
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
PASSWORD_HASHERS: list[str] = env.list(
    "DJANGO_PASSWORD_HASHERS",
    default=[
        "django.contrib.auth.hashers.PBKDF2PasswordHasher",
        "django.contrib.auth.hashers.PBKDF2SHA1PasswordHasher",
    ],
)
LOGIN_URL = "/login/"
LOGIN_REDIRECT_URL = "/"
LOGOUT_REDIRECT_URL = "/login/"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "/static/"
STATIC_ROOT = BASE_DIR / "staticfiles"
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"},
}
WHITENOISE_USE_FINDERS = True

# --- security ----------------------------------------------------------------------------
SESSION_COOKIE_SECURE: bool = env.bool("DJANGO_SECURE_COOKIES", default=IS_PRODUCTION)
CSRF_COOKIE_SECURE = SESSION_COOKIE_SECURE
SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_SAMESITE = "Lax"
CSRF_COOKIE_SAMESITE = "Lax"
SECURE_CONTENT_TYPE_NOSNIFF = True
X_FRAME_OPTIONS = "DENY"
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https") if IS_PRODUCTION else None
# HSTS is sent on HTTPS responses only, so plain HTTP on a laptop is unaffected; 0 turns it off.
SECURE_HSTS_SECONDS: int = env.int("DJANGO_HSTS_SECONDS", default=31_536_000 if IS_PRODUCTION else 0)
SECURE_HSTS_INCLUDE_SUBDOMAINS: bool = env.bool("DJANGO_HSTS_INCLUDE_SUBDOMAINS", default=False)
SECURE_REFERRER_POLICY = "same-origin"
SECURE_CROSS_ORIGIN_OPENER_POLICY = "same-origin"
# Every page, the dashboard and the admin: nothing inline, nothing from elsewhere. The chart data
# travels in <script type="application/json">, which is data, not script, so CSP leaves it alone.
CONTENT_SECURITY_POLICY = {
    "DIRECTIVES": {
        "default-src": ["'self'"],
        "script-src": ["'self'"],
        "style-src": ["'self'"],
        "img-src": ["'self'", "data:"],
        "connect-src": ["'self'"],
        "font-src": ["'self'"],
        "object-src": ["'none'"],
        "base-uri": ["'self'"],
        "form-action": ["'self'"],
        "frame-ancestors": ["'none'"],
    }
}
# Bearer token /metrics asks for. Unset: /metrics answers 404 in production, stays open in
# development (the demo listens on loopback).
MMORCH_METRICS_TOKEN: str = env.str("MMORCH_METRICS_TOKEN", default="")
# Proxies (addresses or CIDR ranges) whose X-Forwarded-For the audit log believes; empty: none.
MMORCH_TRUSTED_PROXIES: list[str] = env.list("MMORCH_TRUSTED_PROXIES", default=[])
for _proxy in MMORCH_TRUSTED_PROXIES:
    try:
        ipaddress.ip_network(_proxy, strict=False)
    except ValueError as _exc:
        raise ImproperlyConfigured(f"MMORCH_TRUSTED_PROXIES: {_proxy!r} is not an address or CIDR range") from _exc

# Largest request body the control plane reads (management API and /v1).
DATA_UPLOAD_MAX_MEMORY_SIZE: int = env.int("MMORCH_MAX_BODY_BYTES", default=1_048_576)

AXES_FAILURE_LIMIT: int = env.int("AXES_FAILURE_LIMIT", default=5)
AXES_COOLOFF_TIME: float = env.float("AXES_COOLOFF_HOURS", default=0.25)
AXES_RESET_ON_SUCCESS = True
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_ENABLED: bool = env.bool("AXES_ENABLED", default=True)

# EMAIL_URL (smtp+tls://user:password@host:587, consolemail://, ...) configures sending in one value.
_email = env.email_url("EMAIL_URL", default="consolemail://")
EMAIL_BACKEND: str = env.str("EMAIL_BACKEND", default=_email["EMAIL_BACKEND"])
EMAIL_HOST: str = _email.get("EMAIL_HOST") or "localhost"
EMAIL_PORT: int = _email.get("EMAIL_PORT") or 25
EMAIL_HOST_USER: str = _email.get("EMAIL_HOST_USER") or ""
EMAIL_HOST_PASSWORD: str = _email.get("EMAIL_HOST_PASSWORD") or ""
EMAIL_USE_TLS: bool = bool(_email.get("EMAIL_USE_TLS", False))
EMAIL_USE_SSL: bool = bool(_email.get("EMAIL_USE_SSL", False))
DEFAULT_FROM_EMAIL: str = env.str("DEFAULT_FROM_EMAIL", default="mm-orch <noreply@mm-orch.local>")
MMORCH_PUBLIC_URL: str = env.str("MMORCH_PUBLIC_URL", default="http://127.0.0.1:8000")

# --- REST API ------------------------------------------------------------------------------
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "tenants.api.authentication.AdminKeyAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_PARSER_CLASSES": ["rest_framework.parsers.JSONParser"],
    "DEFAULT_PAGINATION_CLASS": "core.api.pagination.Pagination",
    "PAGE_SIZE": 50,
    "EXCEPTION_HANDLER": "core.api.errors.exception_handler",
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "UNAUTHENTICATED_USER": None,
}
SPECTACULAR_SETTINGS = {
    "TITLE": "mm-orch management API",
    "DESCRIPTION": "Tenants, members, API keys, limits, audit, usage and invoices.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    # Error responses, page parameters and strict request bodies, declared once for every operation.
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        "core.api.schema.error_responses_hook",
    ],
}

# --- Celery ----------------------------------------------------------------------------------
# With no Redis, a filesystem broker under var/ lets a worker and beat run beside the web server.
CELERY_BROKER_URL: str = env.str("CELERY_BROKER_URL", default=REDIS_URL or "filesystem://")
CELERY_BROKER_TRANSPORT_OPTIONS: dict[str, object] = {}
if CELERY_BROKER_URL.split("://")[0].lower() in SCHEMES:
    # Our Redis forms in kombu's terms: rediss with ssl_cert_reqs, Sentinel as sentinel:// + master_name.
    try:
        CELERY_BROKER_URL, CELERY_BROKER_TRANSPORT_OPTIONS = celery_broker(CELERY_BROKER_URL)
    except RedisUrlError as exc:
        _source = (
            "CELERY_BROKER_URL"
            if env.str("CELERY_BROKER_URL", default="")
            else "CELERY_BROKER_URL (default: REDIS_URL)"
        )
        raise ImproperlyConfigured(f"{_source}: {exc}") from None
if CELERY_BROKER_URL == "filesystem://":
    _broker_dir = VAR_DIR / "celery"
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(_broker_dir / "queue"),
        "data_folder_out": str(_broker_dir / "queue"),
        "processed_folder": str(_broker_dir / "processed"),
        "control_folder": str(_broker_dir / "control"),
        "store_processed": False,
    }
CELERY_TASK_ALWAYS_EAGER: bool = env.bool("CELERY_TASK_ALWAYS_EAGER", default=False)
CELERY_TASK_IGNORE_RESULT = True
CELERY_TIMEZONE = "UTC"
CELERY_BEAT_SCHEDULE: dict[str, dict[str, object]] = {
    "tenants-key-marks-flush": {
        "task": "tenants.tasks.key_marks_flush",
        "schedule": TENANTS_KEY_MARKS_FLUSH_S,
        "options": {"expires": TENANTS_KEY_MARKS_FLUSH_S},
    }
}

# --- inference plane -------------------------------------------------------------------------
# HMAC secret shared with every inference node; several comma-separated values let nodes
# accept an old and a new secret while it rotates (the gateway signs with the first).
_DEV_INFERENCE_SECRET = "dev-inference-secret"  # noqa: S105
INFERENCE_SHARED_SECRET: str = env.str("INFERENCE_SHARED_SECRET", default=_DEV_INFERENCE_SECRET)
if IS_PRODUCTION and INFERENCE_SHARED_SECRET == _DEV_INFERENCE_SECRET:
    raise ImproperlyConfigured("INFERENCE_SHARED_SECRET must be set in production")

# --- tenants ---------------------------------------------------------------------------------
# (tenants settings go here)

# --- gateway ---------------------------------------------------------------------------------
# Largest /v1 request body (413 above it).
GATEWAY_MAX_BODY_BYTES: int = env.int("GATEWAY_MAX_BODY_BYTES", default=DATA_UPLOAD_MAX_MEMORY_SIZE)
# How often each process reloads its routing snapshot (models, versions, up nodes, grants).
GATEWAY_REGISTRY_REFRESH_S: float = env.float("GATEWAY_REGISTRY_REFRESH_S", default=1.0)
# Concurrency leases expire after this long unless a live stream renews them (crash safety).
GATEWAY_LEASE_TTL_S: float = env.float("GATEWAY_LEASE_TTL_S", default=60.0)
# Bounds connecting to a node and each wait for its next bytes (not the whole stream).
GATEWAY_UPSTREAM_TIMEOUT_S: float = env.float("GATEWAY_UPSTREAM_TIMEOUT_S", default=120.0)
# A node that just failed is skipped by this process for this long (the probe confirms).
GATEWAY_NODE_FAIL_COOLDOWN_S: float = env.float("GATEWAY_NODE_FAIL_COOLDOWN_S", default=2.0)
# A node's 5xx answers to this many distinct requests in a row open its circuit breaker.
GATEWAY_NODE_BREAKER_FAILURES: int = env.int("GATEWAY_NODE_BREAKER_FAILURES", default=3)
# A tenant whose requests fail at the nodes this many times in a minute gets 429 for a while.
GATEWAY_TENANT_FAILURES_PER_MINUTE: int = env.int("GATEWAY_TENANT_FAILURES_PER_MINUTE", default=5)
GATEWAY_TENANT_THROTTLE_S: float = env.float("GATEWAY_TENANT_THROTTLE_S", default=30.0)
# Queue cap per tenant asked of nodes (0: the node's default).
GATEWAY_NODE_MAX_QUEUED: int = env.int("GATEWAY_NODE_MAX_QUEUED", default=0)
# Prompt size estimate for reservations and the prompt-token limit (bytes per token).
GATEWAY_PROMPT_BYTES_PER_TOKEN: float = env.float("GATEWAY_PROMPT_BYTES_PER_TOKEN", default=4.0)
# Output tokens reserved when the request names no max_tokens and the plan sets no cap.
GATEWAY_DEFAULT_RESERVE_TOKENS: int = env.int("GATEWAY_DEFAULT_RESERVE_TOKENS", default=256)
# Most choices (`n`) one /v1 request may ask for; each is a sequence in a node's batch.
GATEWAY_MAX_N: int = env.int("GATEWAY_MAX_N", default=8)
# Keep-alive connections to nodes per gateway process.
GATEWAY_UPSTREAM_POOL_SIZE: int = env.int("GATEWAY_UPSTREAM_POOL_SIZE", default=256)
GATEWAY_MARK_KEYS_USED: bool = env.bool("GATEWAY_MARK_KEYS_USED", default=True)
# Without Redis: seconds between reads of a tenant's month-to-date usage from the ledger (spend cap).
GATEWAY_LEDGER_BASELINE_S: float = env.float("GATEWAY_LEDGER_BASELINE_S", default=5.0)
# The /v1 lane of gateway.asgi: only async-capable middleware, no per-request thread hops.
GATEWAY_MIDDLEWARE: list[str] = ["core.observability.RequestIdMiddleware", "core.observability.MetricsMiddleware"]
GATEWAY_LEAN_PATH_PREFIXES: list[str] = env.list("GATEWAY_LEAN_PATH_PREFIXES", default=["/v1/"])
# Node health: Celery beat probes every node's /ready this often (one failed probe: down).
GATEWAY_NODE_PROBE_INTERVAL_S: float = env.float("GATEWAY_NODE_PROBE_INTERVAL_S", default=5.0)
GATEWAY_NODE_PROBE_TIMEOUT_S: float = env.float("GATEWAY_NODE_PROBE_TIMEOUT_S", default=2.0)
CELERY_BEAT_SCHEDULE["gateway-nodes-probe"] = {
    "task": "gateway.tasks.nodes_probe",
    "schedule": GATEWAY_NODE_PROBE_INTERVAL_S,
    "options": {"expires": GATEWAY_NODE_PROBE_INTERVAL_S},
}

# --- billing ---------------------------------------------------------------------------------
from celery.schedules import crontab  # noqa: E402

BILLING_DEFAULT_CURRENCY: str = env.str("BILLING_DEFAULT_CURRENCY", default="USD")
BILLING_INVOICE_PREFIX: str = env.str("BILLING_INVOICE_PREFIX", default="MMO")
BILLING_NET_DAYS: int = env.int("BILLING_NET_DAYS", default=14)
BILLING_INGEST_PAGE_SIZE: int = env.int("BILLING_INGEST_PAGE_SIZE", default=1000)
# Nodes ingested at once, one database connection each; the rollup rows they share serialise
# their writes, so more than the database's cores stops paying.
BILLING_INGEST_CONCURRENCY: int = env.int("BILLING_INGEST_CONCURRENCY", default=2)
# A billing run reads the ledger for this many tenants at a time and writes this many invoices per
# transaction: memory follows the first, lock time the second.
BILLING_RUN_CHUNK: int = env.int("BILLING_RUN_CHUNK", default=5000)
BILLING_RUN_BATCH: int = env.int("BILLING_RUN_BATCH", default=500)
BILLING_INGEST_INTERVAL_S: float = env.float("BILLING_INGEST_INTERVAL_S", default=5.0)
BILLING_ISSUER_NAME: str = env.str("BILLING_ISSUER_NAME", default="mm-orch")
# Cost of serving: what one inference node costs per hour (engine-seconds are priced at this).
BILLING_NODE_HOUR_PRICE: Decimal = Decimal(env.str("BILLING_NODE_HOUR_PRICE", default="2.50"))
BILLING_NODE_HOUR_CURRENCY: str = env.str("BILLING_NODE_HOUR_CURRENCY", default="USD")
# Spend anomalies: a tenant whose spend today passes FACTOR x its average over the previous DAYS
# days (and at least MIN) is reported by email and, when set, to the webhook.
BILLING_SPEND_JUMP_FACTOR: float = env.float("BILLING_SPEND_JUMP_FACTOR", default=3.0)
BILLING_SPEND_JUMP_DAYS: int = env.int("BILLING_SPEND_JUMP_DAYS", default=7)
BILLING_SPEND_JUMP_MIN: Decimal = Decimal(env.str("BILLING_SPEND_JUMP_MIN", default="1.00"))
BILLING_ALERT_WEBHOOK_URL: str = env.str("BILLING_ALERT_WEBHOOK_URL", default="")
if BILLING_ALERT_WEBHOOK_URL and not BILLING_ALERT_WEBHOOK_URL.startswith(("http://", "https://")):
    raise ImproperlyConfigured("BILLING_ALERT_WEBHOOK_URL must be an http:// or https:// URL")
BILLING_ALERT_WEBHOOK_TIMEOUT_S: float = env.float("BILLING_ALERT_WEBHOOK_TIMEOUT_S", default=5.0)
# Stripe is on when an API key is set; STRIPE_API_BASE points the client elsewhere (tests).
STRIPE_API_KEY: str = env.str("STRIPE_API_KEY", default="")
STRIPE_WEBHOOK_SECRET: str = env.str("STRIPE_WEBHOOK_SECRET", default="")
STRIPE_API_BASE: str = env.str("STRIPE_API_BASE", default="")
STRIPE_MAX_NETWORK_RETRIES: int = env.int("STRIPE_MAX_NETWORK_RETRIES", default=2)
STRIPE_ENABLED: bool = bool(STRIPE_API_KEY)
STRIPE_WEBHOOK_TOLERANCE_S: int = 300
# A run that waited longer than one interval is dropped: the next one pulls the same journals.
CELERY_BEAT_SCHEDULE["billing-ingest-usage"] = {
    "task": "billing.tasks.usage_ingest_task",
    "schedule": BILLING_INGEST_INTERVAL_S,
    "options": {"expires": BILLING_INGEST_INTERVAL_S},
}
# Spend anomalies are checked every hour, a few minutes past it (after ingestion caught up).
CELERY_BEAT_SCHEDULE["billing-spend-jump-check"] = {
    "task": "billing.tasks.spend_jump_check_task",
    "schedule": crontab(minute=7),
}
# The 1st of each month at 01:00 UTC: bill the month that just ended.
CELERY_BEAT_SCHEDULE["billing-monthly-run"] = {
    "task": "billing.tasks.billing_run_previous_month_task",
    "schedule": crontab(minute=0, hour=1, day_of_month=1),
}

# --- frontend --------------------------------------------------------------------------------
# The dashboard's navigation (tenant switcher, sections the role may open) on every page.
TEMPLATES[0]["OPTIONS"]["context_processors"].append("frontend.context_processors.nav")  # type: ignore[index]
# A locked-out sign-in gets the sign-in page with a clear message instead of a bare 403.
AXES_LOCKOUT_CALLABLE = "frontend.views.auth.lockout"
# The sign-in forms (dashboard and admin) post the email as `username`; axes would otherwise look
# for the user model's USERNAME_FIELD ("email") and count every failure against no one.
AXES_USERNAME_FORM_FIELD = "username"
# Password reset links work for 3 hours.
PASSWORD_RESET_TIMEOUT = 3 * 3600

# Structured lines (wire/logs.py): MMORCH_LOG_FORMAT=json (the images) or console (the default).
LOGGING_CONFIG = "core.logging.configure"
LOGGING = logging_config(service="control-plane", level=env.str("LOG_LEVEL", default="INFO"))
