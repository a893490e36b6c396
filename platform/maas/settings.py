"""Settings, all from the environment.

With no variables set this is the *embedded default*: SQLite, a filesystem Celery broker, a
file cache and local media, all under VAR_DIR (default ./var). MAAS_ENV=production switches to
the production profile, which refuses to boot without SECRET_KEY and ALLOWED_HOSTS and passes
`manage.py check --deploy`. DATABASE_URL and REDIS_URL pick the real services in either profile
(CI runs the tests against PostgreSQL and Redis that way).
"""

from __future__ import annotations

from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

from maas import env

REPO_DIR = Path(__file__).resolve().parents[2]
VAR_DIR = Path(env.get("VAR_DIR", str(REPO_DIR / "var"))).resolve()

MAAS_ENV = env.get("MAAS_ENV", "development")
if MAAS_ENV not in {"development", "production"}:
    raise ImproperlyConfigured(f"MAAS_ENV must be 'development' or 'production', got {MAAS_ENV!r}")
PRODUCTION = MAAS_ENV == "production"

DEBUG = env.flag("DEBUG", default=False)
if PRODUCTION and DEBUG:
    raise ImproperlyConfigured("DEBUG must be off when MAAS_ENV=production")

if PRODUCTION:
    SECRET_KEY = env.get("SECRET_KEY") or ""
    if len(SECRET_KEY) < 50 or len(set(SECRET_KEY)) < 5 or SECRET_KEY.startswith("django-insecure-"):
        raise ImproperlyConfigured(
            "MAAS_ENV=production needs SECRET_KEY: at least 50 random characters, "
            'e.g. python -c "import secrets; print(secrets.token_urlsafe(64))"'
        )
    ALLOWED_HOSTS = env.listing("ALLOWED_HOSTS", [])
    if not ALLOWED_HOSTS:
        raise ImproperlyConfigured("MAAS_ENV=production needs ALLOWED_HOSTS (comma-separated)")
else:
    SECRET_KEY = env.get("SECRET_KEY") or env.local_secret_key(VAR_DIR)
    ALLOWED_HOSTS = env.listing("ALLOWED_HOSTS", ["localhost", "127.0.0.1", "[::1]", "testserver"])

CSRF_TRUSTED_ORIGINS = env.listing("CSRF_TRUSTED_ORIGINS", [])

INSTALLED_APPS = [
    "maas.admin_site.AdminConfig",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "django_htmx",
    "accounts",
    "tenancy",
    "compute",
    "catalog",
    "billing",
    "serving",
    "fine_tuning",
    "batches",
    "frontend",
    "maas",
]

MIDDLEWARE = [
    "maas.middleware.RequestIdMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "maas.urls"
WSGI_APPLICATION = "maas.wsgi.application"
ASGI_APPLICATION = "maas.asgi.application"

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

# --- Database -------------------------------------------------------------------------------
DATABASE_URL = env.get("DATABASE_URL")
VAR_DIR.mkdir(parents=True, exist_ok=True)
# Under ASGI, Django's guidance: no persistent connections (CONN_MAX_AGE 0), since sync code runs on
# whichever executor thread is free and a per-thread connection would outlive its request. On
# PostgreSQL a psycopg pool per process (DB_POOL, on by default) takes their place: a request
# borrows a connection and gives it back when it ends (bench/README.md has the before and after).
DB_POOL_RECONNECT_SECONDS = env.integer("DB_POOL_RECONNECT_SECONDS", 5)
if DATABASE_URL:
    DATABASES = {"default": dj_database_url.parse(DATABASE_URL, conn_max_age=env.integer("DB_CONN_MAX_AGE", 0))}
else:
    DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": str(VAR_DIR / "db.sqlite3")}}
if DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql":
    DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
    if env.flag("DB_POOL", default=True):
        DATABASES["default"]["CONN_MAX_AGE"] = 0  # the pool keeps the connections
        # A health check would cost a round trip on every borrow; the pool drops a connection that
        # comes back broken instead.
        DATABASES["default"]["CONN_HEALTH_CHECKS"] = False
        DATABASES["default"].setdefault("OPTIONS", {})["pool"] = {
            "min_size": env.integer("DB_POOL_MIN_SIZE", 1),
            "max_size": env.integer("DB_POOL_MAX_SIZE", 8),
            "timeout": env.integer("DB_POOL_TIMEOUT", 10),
            # psycopg's pool retries a lost connection with a delay that doubles without bound until
            # this many seconds have passed: after a 30 s outage the next try could be half a minute
            # away. Giving up early lets the next borrower try at once, so the process is back
            # within a drain tick of the database.
            "reconnect_timeout": DB_POOL_RECONNECT_SECONDS,
        }
elif DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    DATABASES["default"]["CONN_MAX_AGE"] = 0
    # Several processes (web, workers, beat) share the file: wait for locks, and start write
    # transactions immediately so that they queue instead of failing on a lock upgrade.
    DATABASES["default"]["OPTIONS"] = {
        "timeout": 30,
        "transaction_mode": "IMMEDIATE",
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
    }
    # A file, not memory, so that a server started by a test can share the test database.
    DATABASES["default"]["TEST"] = {"NAME": str(VAR_DIR / "test-db.sqlite3")}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- Cache (shared between processes: key revocation must reach every web process at once) ----
REDIS_URL = env.get("REDIS_URL")
# Connections a process keeps to Redis; a burst beyond them waits up to REDIS_POOL_TIMEOUT seconds.
REDIS_MAX_CONNECTIONS = env.integer("REDIS_MAX_CONNECTIONS", 64)
REDIS_POOL_TIMEOUT = env.integer("REDIS_POOL_TIMEOUT", 5)
if REDIS_URL:
    CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": REDIS_URL,
            "KEY_PREFIX": env.get("CACHE_KEY_PREFIX", "maas"),
        }
    }
else:
    CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.filebased.FileBasedCache",
            "LOCATION": str(VAR_DIR / "cache"),
            "KEY_PREFIX": env.get("CACHE_KEY_PREFIX", "maas"),
            "OPTIONS": {"MAX_ENTRIES": 100_000},
        }
    }

# --- Celery ---------------------------------------------------------------------------------
CELERY_BROKER_URL = env.get("CELERY_BROKER_URL") or REDIS_URL or "filesystem://"
CELERY_BROKER_TRANSPORT_OPTIONS: dict = {}
if CELERY_BROKER_URL.startswith("filesystem://"):
    _queue_dir = VAR_DIR / "celery" / "queue"
    _processed_dir = VAR_DIR / "celery" / "processed"
    _control_dir = VAR_DIR / "celery" / "control"  # kombu's default is ./control, in the working directory
    for _d in (_queue_dir, _processed_dir, _control_dir):
        _d.mkdir(parents=True, exist_ok=True)
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(_queue_dir),
        "data_folder_out": str(_queue_dir),
        "processed_folder": str(_processed_dir),
        "store_processed": False,
        "control_folder": str(_control_dir),
    }
elif CELERY_BROKER_URL.startswith(("redis://", "rediss://")):
    # Above the longest job, so that an unacked long task is not redelivered while it runs.
    CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": env.integer("CELERY_VISIBILITY_TIMEOUT", 6 * 3600)}
CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_DEFAULT_QUEUE = "default"
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_ALWAYS_EAGER = env.flag("CELERY_TASK_ALWAYS_EAGER", default=False)
CELERY_BEAT_SCHEDULE_FILENAME = str(VAR_DIR / "celerybeat-schedule")
ENDPOINT_RECONCILE_SECONDS = env.integer("ENDPOINT_RECONCILE_SECONDS", 15)
CELERY_BEAT_SCHEDULE: dict = {
    "reconcile-endpoints": {
        "task": "serving.tasks.reconcile_endpoints",
        "schedule": ENDPOINT_RECONCILE_SECONDS,
    },
    "meter-dedicated-endpoints": {
        "task": "serving.tasks.meter_dedicated_endpoints",
        "schedule": env.integer("ENDPOINT_METER_SECONDS", 60),
    },
    "scale-deployments": {
        "task": "serving.tasks.scale_deployments",
        "schedule": env.integer("SERVING_SCALE_SECONDS", 5),
    },
    "probe-backends": {"task": "serving.tasks.probe_backends", "schedule": env.integer("BACKEND_PROBE_SECONDS", 15)},
    "requeue-expired-jobs": {"task": "fine_tuning.tasks.reap_jobs", "schedule": env.integer("JOB_REAPER_SECONDS", 15)},
    "sweep-fine-tuning-disk": {
        "task": "fine_tuning.tasks.sweep_disk",
        "schedule": env.integer("FINE_TUNING_SWEEP_SECONDS", 3600),
    },
    # Spool files of web processes that died on this host (live ones drain their own).
    "release-expired-reservations": {"task": "billing.tasks.release_expired_reservations", "schedule": 60},
    "roll-up-usage": {"task": "billing.tasks.roll_up_usage", "schedule": env.integer("USAGE_ROLLUP_SECONDS", 60)},
    "close-invoices": {"task": "billing.tasks.close_invoices", "schedule": 3600},
    "enforce-payment-grace": {"task": "billing.tasks.enforce_payment_grace", "schedule": 3600},
    "drain-metering-outbox": {
        "task": "billing.tasks.drain_outbox",
        "schedule": env.integer("METERING_SWEEP_SECONDS", 30),
    },
}

# --- Auth -----------------------------------------------------------------------------------
AUTH_USER_MODEL = "accounts.User"
LOGIN_URL = "frontend:sign_in"
LOGIN_REDIRECT_URL = "frontend:home"
LOGOUT_REDIRECT_URL = "frontend:sign_in"
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator", "OPTIONS": {"min_length": 10}},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
INVITATION_TTL_HOURS = env.integer("INVITATION_TTL_HOURS", 72)
# How long the link that confirms a new account's address is valid.
EMAIL_VERIFICATION_HOURS = env.integer("EMAIL_VERIFICATION_HOURS", 72)
# Who may create an account: "open" (anyone; they get an organization of their own),
# "invite-only" (only someone following an invitation, who joins that organization), "closed"
# (no sign-up: the back office creates users).
SIGN_UP_MODE = env.get("SIGN_UP_MODE", "open")
if SIGN_UP_MODE not in {"open", "invite-only", "closed"}:
    raise ImproperlyConfigured(f"SIGN_UP_MODE must be open, invite-only or closed, got {SIGN_UP_MODE!r}")
MAX_ORGANIZATIONS_PER_USER = env.integer("MAX_ORGANIZATIONS_PER_USER", 10)  # organizations a user may own
# Failed sign-ins allowed per client IP and per account within SIGN_IN_THROTTLE_SECONDS.
SIGN_IN_MAX_FAILURES_PER_IP = env.integer("SIGN_IN_MAX_FAILURES_PER_IP", 10)
SIGN_IN_MAX_FAILURES_PER_ACCOUNT = env.integer("SIGN_IN_MAX_FAILURES_PER_ACCOUNT", 5)
SIGN_IN_THROTTLE_SECONDS = env.integer("SIGN_IN_THROTTLE_SECONDS", 900)
SIGN_UP_MAX_PER_IP = env.integer("SIGN_UP_MAX_PER_IP", 5)  # sign-up attempts per client IP
SIGN_UP_THROTTLE_SECONDS = env.integer("SIGN_UP_THROTTLE_SECONDS", 3600)
# Password reset mails: per client IP and per account, in a window (a mailbox is not flooded).
PASSWORD_RESET_MAX_PER_IP = env.integer("PASSWORD_RESET_MAX_PER_IP", 10)
PASSWORD_RESET_MAX_PER_ACCOUNT = env.integer("PASSWORD_RESET_MAX_PER_ACCOUNT", 3)
PASSWORD_RESET_THROTTLE_SECONDS = env.integer("PASSWORD_RESET_THROTTLE_SECONDS", 3600)

# --- I18N, static, media --------------------------------------------------------------------
LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True
STATIC_URL = "static/"
STATIC_ROOT = VAR_DIR / "static"
# Static files are served by the ASGI entry point (maas.asgi) straight from the apps' static
# folders, asynchronously: `make run` needs no collectstatic, and no sync middleware slows /v1/.
STATIC_PACKAGES = ["frontend", "django.contrib.admin", "rest_framework", "drf_spectacular_sidecar"]
MEDIA_ROOT = Path(env.get("MEDIA_ROOT", str(VAR_DIR / "media")))
MEDIA_URL = "media/"

# --- The model catalog ----------------------------------------------------------------------
MODEL_CACHE_DIR = Path(env.get("MODEL_CACHE_DIR", str(VAR_DIR / "models")))

# --- Fine-tuning ----------------------------------------------------------------------------
FILE_UPLOAD_MAX_BYTES = env.integer("FILE_UPLOAD_MAX_BYTES", 512 * 1024 * 1024)
# Bytes of (undeleted) files an organization may keep, unless the back office sets its own quota,
# and uploads an organization may make an hour.
STORAGE_QUOTA_BYTES = env.integer("STORAGE_QUOTA_BYTES", 10 * 1024**3)
FILE_UPLOADS_PER_HOUR = env.integer("FILE_UPLOADS_PER_HOUR", 200)
# Every other request body (JSON, forms). Enforced by maas.body_limits before Django reads the
# body; kept below FILE_UPLOAD_MAX_MEMORY_SIZE (2.5 MB) so such bodies never touch the disk.
REQUEST_BODY_MAX_BYTES = env.integer("REQUEST_BODY_MAX_BYTES", 2 * 1024 * 1024)
DATA_UPLOAD_MAX_MEMORY_SIZE = REQUEST_BODY_MAX_BYTES
FINE_TUNING_MAX_LINE_BYTES = env.integer("FINE_TUNING_MAX_LINE_BYTES", 4 * 1024 * 1024)
# Uploads are validated (template rendering, token counts) with this model's tokenizer; a job
# re-checks token lengths against its own base model.
FINE_TUNING_REFERENCE_MODEL = env.get("FINE_TUNING_REFERENCE_MODEL", "smollm2-135m-instruct")
# Fair share keeps one organization's queue from delaying the others; this only bounds a runaway script.
FINE_TUNING_MAX_ACTIVE_JOBS = env.integer("FINE_TUNING_MAX_ACTIVE_JOBS", 64)
FINE_TUNING_QUEUE = env.get("FINE_TUNING_QUEUE", "gpu")  # the Celery queue GPU workers consume
WORKER_HEARTBEAT_SECONDS = env.integer("WORKER_HEARTBEAT_SECONDS", 15)
# The pool (platform/compute/README.md). A host without CUDA offers its CPU as this many accelerators.
COMPUTE_NODE_NAME = env.get("COMPUTE_NODE_NAME", "")
# Two by default: on a laptop or a CPU server, one share of the cores serves the demo model while
# the other trains; each runs on its share's threads.
COMPUTE_CPU_ACCELERATORS = env.integer("COMPUTE_CPU_ACCELERATORS", 2)
# The address this node's engines listen on and the gateway reaches them at.
COMPUTE_NODE_ADDRESS = env.get("COMPUTE_NODE_ADDRESS", "127.0.0.1")
# The network interface of that address, for the gloo traffic of a job across nodes (empty: gloo
# picks by the hostname).
COMPUTE_NODE_INTERFACE = env.get("COMPUTE_NODE_INTERFACE", "")
COMPUTE_FAIR_SHARE_WINDOW_SECONDS = env.integer("COMPUTE_FAIR_SHARE_WINDOW_SECONDS", 24 * 3600)
COMPUTE_RESERVE_AFTER_SECONDS = env.integer("COMPUTE_RESERVE_AFTER_SECONDS", 3600)
COMPUTE_LEND_IDLE_SECONDS = env.integer("COMPUTE_LEND_IDLE_SECONDS", 300)
COMPUTE_WAKE_TASK = "fine_tuning.tasks.claim_jobs"
# Serving in the pool (platform/compute/README.md, "Replicas"): the scaler's pass, how long load
# stays above target before another replica starts, how long a call waits for a model scaled to
# zero, how long a stopping replica lets its requests finish, and an engine's start-up bound.
SERVING_SCALE_SECONDS = env.integer("SERVING_SCALE_SECONDS", 5)
SERVING_SCALE_UP_AFTER_SECONDS = env.integer("SERVING_SCALE_UP_AFTER_SECONDS", 10)
SERVING_COLD_START_WAIT_SECONDS = env.integer("SERVING_COLD_START_WAIT_SECONDS", 90)
SERVING_DRAIN_SECONDS = env.integer("SERVING_DRAIN_SECONDS", 30)
SERVING_ENGINE_START_SECONDS = env.integer("SERVING_ENGINE_START_SECONDS", 600)
# The Batch API's runner (platform/batches): requests in flight per runner process, and how long a
# claimed request stays its runner's before another may take it (a runner that died).
BATCH_RUNNER_CONCURRENCY = env.integer("BATCH_RUNNER_CONCURRENCY", 8)
BATCH_LEASE_SECONDS = env.integer("BATCH_LEASE_SECONDS", 900)
# A replica whose engine exits this many times within ten minutes fails instead of starting again.
SERVING_MAX_CRASHES = env.integer("SERVING_MAX_CRASHES", 4)
# Memory a replica keeps for its KV cache beside its weights (placement adds both).
SERVING_KV_BUDGET_BYTES = env.integer("SERVING_KV_BUDGET_BYTES", 512 * 1024**2)
# vLLM runs in a virtualenv of its own (`make vllm`): the Python that has it.
VLLM_PYTHON = env.get("VLLM_PYTHON", str(REPO_DIR / ".venv-vllm" / "bin" / "python"))
# Bearer token for /metrics/pool; empty: loopback scrapers only, and nobody in production (behind
# a proxy on the same host, every request comes from loopback).
METRICS_TOKEN = env.get("METRICS_TOKEN", "")
# The proxies (addresses or networks) whose X-Forwarded-For uvicorn believes: the client's address
# (audit rows, sign-in and sign-up throttles) is the first one left of them. Behind a remote load
# balancer, name it here, or every client has the balancer's address.
TRUSTED_PROXIES = env.listing("TRUSTED_PROXIES", ["127.0.0.1"])
# A running job's worker renews its lease every third of this; a job whose lease expired is
# requeued by the reaper and resumes from its last checkpoint.
FINE_TUNING_LEASE_SECONDS = env.integer("FINE_TUNING_LEASE_SECONDS", 60)
FINE_TUNING_REDISPATCH_SECONDS = env.integer("FINE_TUNING_REDISPATCH_SECONDS", 120)
# A job whose worker stopped answering this many times fails with the reason instead of a new try.
FINE_TUNING_MAX_ATTEMPTS = env.integer("FINE_TUNING_MAX_ATTEMPTS", 5)
FINE_TUNING_CHECKPOINT_EVERY = env.integer("FINE_TUNING_CHECKPOINT_EVERY", 10)
# An ended job's work directory (its checkpoints' adapters) is removed this long after it ended
# (fine_tuning/retention.py has every rule).
FINE_TUNING_WORK_RETENTION_HOURS = env.integer("FINE_TUNING_WORK_RETENTION_HOURS", 168)
FINE_TUNING_WORK_DIR = Path(env.get("FINE_TUNING_WORK_DIR", str(VAR_DIR / "fine_tuning")))
ADAPTER_STORE = Path(env.get("ADAPTER_STORE", str(MEDIA_ROOT / "adapters")))

# --- Email (invitations and billing notices) ---------------------------------------------------
# The embedded default writes each message to a file under VAR_DIR/mail; set EMAIL_BACKEND
# (e.g. django.core.mail.backends.smtp.EmailBackend with EMAIL_HOST, EMAIL_PORT, ...) to send.
EMAIL_BACKEND = env.get("EMAIL_BACKEND", "django.core.mail.backends.filebased.EmailBackend")
EMAIL_FILE_PATH = str(VAR_DIR / "mail")
EMAIL_HOST = env.get("EMAIL_HOST", "localhost")
EMAIL_PORT = env.integer("EMAIL_PORT", 25)
EMAIL_HOST_USER = env.get("EMAIL_HOST_USER", "")
EMAIL_HOST_PASSWORD = env.get("EMAIL_HOST_PASSWORD", "")
EMAIL_USE_TLS = env.get("EMAIL_USE_TLS", "0") == "1"
DEFAULT_FROM_EMAIL = env.get("DEFAULT_FROM_EMAIL", "maas@localhost")

# --- Billing --------------------------------------------------------------------------------
# One currency for every price, balance and invoice; money is integer nano-units of it (billing/money.py).
BILLING_CURRENCY = env.get("BILLING_CURRENCY", "usd").lower()
# Seconds a process caches prices and which budgets apply: a new price, limit or mode takes effect
# within this (balances and spend are never cached: every reservation is a conditional UPDATE).
BILLING_CACHE_SECONDS = env.integer("BILLING_CACHE_SECONDS", 5)
# A new organization's account: "prepaid" (requests need credit) or "invoiced" (billed monthly),
# and the credit it starts with (a decimal amount of BILLING_CURRENCY).
BILLING_DEFAULT_MODE = env.get("BILLING_DEFAULT_MODE", "prepaid")
BILLING_SIGNUP_CREDIT = env.get("BILLING_SIGNUP_CREDIT", "5")
# A web process renews its bulk holds while it lives; a hold (or a fine-tune's reservation) not
# renewed for this long belongs to a process or job that is gone, and the reaper gives it back.
BILLING_RESERVATION_TTL_SECONDS = env.integer("BILLING_RESERVATION_TTL_SECONDS", 900)
# A web process gives back the unused part of a bulk hold no request has drawn from for this long.
BILLING_HOLD_IDLE_SECONDS = env.integer("BILLING_HOLD_IDLE_SECONDS", 5)
# The monthly close runs this long after a month ends, so usage spooled in its last moments is in.
BILLING_CLOSE_GRACE_HOURS = env.integer("BILLING_CLOSE_GRACE_HOURS", 2)
# After a failed invoice payment, the organization is suspended if it is still unpaid this long after.
BILLING_PAYMENT_GRACE_DAYS = env.integer("BILLING_PAYMENT_GRACE_DAYS", 7)
BILLING_TOP_UP_MIN = env.get("BILLING_TOP_UP_MIN", "1")
BILLING_TOP_UP_MAX = env.get("BILLING_TOP_UP_MAX", "10000")
# "fake" charges nobody (the embedded default); "stripe" needs the two keys below. Production
# defaults to Stripe and refuses the fake provider (anyone could save a test card and top up
# credit for nothing) unless the operator opts in by its loud name, e.g. for a closed pilot.
PAYMENT_PROVIDER = env.get("PAYMENT_PROVIDER", "stripe" if PRODUCTION else "fake")
STRIPE_SECRET_KEY = env.get("STRIPE_SECRET_KEY", "")
STRIPE_WEBHOOK_SECRET = env.get("STRIPE_WEBHOOK_SECRET", "")
STRIPE_API_BASE = env.get("STRIPE_API_BASE", "")  # empty: Stripe itself
FAKE_PAYMENTS_IN_PRODUCTION = env.flag("ALLOW_FAKE_PAYMENTS_IN_PRODUCTION_NOBODY_IS_CHARGED", default=False)
if PAYMENT_PROVIDER not in {"fake", "stripe"}:
    raise ImproperlyConfigured(f"PAYMENT_PROVIDER must be fake or stripe, got {PAYMENT_PROVIDER!r}")
if PRODUCTION and PAYMENT_PROVIDER == "fake" and not FAKE_PAYMENTS_IN_PRODUCTION:
    raise ImproperlyConfigured(
        "MAAS_ENV=production refuses PAYMENT_PROVIDER=fake: it accepts any test card and charges nobody. "
        "Use PAYMENT_PROVIDER=stripe with STRIPE_SECRET_KEY and STRIPE_WEBHOOK_SECRET, or set "
        "ALLOW_FAKE_PAYMENTS_IN_PRODUCTION_NOBODY_IS_CHARGED=1 if that is what you mean."
    )
if PAYMENT_PROVIDER == "stripe" and not (STRIPE_SECRET_KEY and STRIPE_WEBHOOK_SECRET):
    raise ImproperlyConfigured("PAYMENT_PROVIDER=stripe needs STRIPE_SECRET_KEY and STRIPE_WEBHOOK_SECRET")
# Usage records are appended here before a response ends, then drained into the ledger (billing/outbox.py).
# Local disk of the web host; each process drains its own file and those of processes that died.
METERING_SPOOL_DIR = Path(env.get("METERING_SPOOL_DIR", str(VAR_DIR / "metering")))
METERING_DRAIN_SECONDS = float(env.get("METERING_DRAIN_SECONDS", "0.5"))

# --- API ------------------------------------------------------------------------------------
ADMIN_URL = env.get("ADMIN_URL", "admin/").strip("/") + "/"
API_KEY_CACHE_SECONDS = env.integer("API_KEY_CACHE_SECONDS", 300)
API_KEY_LAST_USED_RESOLUTION_SECONDS = env.integer("API_KEY_LAST_USED_RESOLUTION_SECONDS", 60)

# Per-minute limits; organizations and keys can override them in the back office.
RATE_LIMITS = {
    "key_rpm": env.integer("RATE_LIMIT_KEY_RPM", 600),
    "key_tpm": env.integer("RATE_LIMIT_KEY_TPM", 400_000),
    "org_rpm": env.integer("RATE_LIMIT_ORG_RPM", 3_000),
    "org_tpm": env.integer("RATE_LIMIT_ORG_TPM", 2_000_000),
}
GATEWAY_UPSTREAM_TIMEOUT = env.integer("GATEWAY_UPSTREAM_TIMEOUT", 600)
GATEWAY_ROUTE_CACHE_SECONDS = env.integer("GATEWAY_ROUTE_CACHE_SECONDS", 5)

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "tenancy.api.authentication.APIKeyAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["tenancy.api.permissions.SignedInOrKey"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    # JSON only (the file upload names its own parser): one body format, the one the document
    # describes; a form's strings ("56", "") cannot mean what the JSON types say.
    "DEFAULT_PARSER_CLASSES": ["tenancy.api.parsers.BoundedJSONParser"],
    "DEFAULT_PAGINATION_CLASS": "tenancy.api.pagination.CursorPagination",
    "EXCEPTION_HANDLER": "tenancy.api.errors.exception_handler",
    "UNAUTHENTICATED_USER": "django.contrib.auth.models.AnonymousUser",
}
SPECTACULAR_SETTINGS = {
    "TITLE": "MaaS platform management API",
    "DESCRIPTION": "The management API (/api/: organizations, members, invitations, API keys, files, datasets) "
    "and the OpenAI-compatible API (/v1/: models, chat completions, completions, files, fine-tuning jobs).",
    "VERSION": "0.1.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "COMPONENT_SPLIT_REQUEST": True,
    "PREPROCESSING_HOOKS": ["maas.schema.management_api_only"],
    "POSTPROCESSING_HOOKS": ["drf_spectacular.hooks.postprocess_schema_enums", "maas.schema.add_v1_and_errors"],
    # Swagger UI from the installed sidecar package: the platform never loads a CDN.
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
}

# --- Production hardening -------------------------------------------------------------------
if PRODUCTION:
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    SECURE_SSL_REDIRECT = env.flag("SECURE_SSL_REDIRECT", default=True)
    SECURE_HSTS_SECONDS = env.integer("SECURE_HSTS_SECONDS", 31_536_000)
    SECURE_HSTS_INCLUDE_SUBDOMAINS = True
    SECURE_HSTS_PRELOAD = env.flag("SECURE_HSTS_PRELOAD", default=False)
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True
    SILENCED_SYSTEM_CHECKS = [] if SECURE_HSTS_PRELOAD else ["security.W021"]

# --- Logging: key material is scrubbed from every record, whatever logged it ----------------
LOG_LEVEL = env.get("LOG_LEVEL", "INFO")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {"redact_secrets": {"()": "maas.logging.RedactSecretsFilter"}},
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "handlers": {
        "console": {"class": "logging.StreamHandler", "formatter": "plain", "filters": ["redact_secrets"]},
    },
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
    # uvicorn's request lines carry URLs (invitation links among them): through the same filter.
    "loggers": {
        name: {"handlers": ["console"], "level": LOG_LEVEL, "propagate": False}
        for name in ("uvicorn", "uvicorn.access", "uvicorn.error")
    },
}
