"""Settings come from the environment; production refuses to boot unsafely."""

import os
import secrets
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def manage(*args, env: dict, tmp_path) -> subprocess.CompletedProcess:
    base = {
        k: v
        for k, v in os.environ.items()
        if k
        not in {
            "DATABASE_URL",
            "REDIS_URL",
            "SECRET_KEY",
            "MAAS_ENV",
            "ALLOWED_HOSTS",
            "CELERY_BROKER_URL",
            "DJANGO_SETTINGS_MODULE",
        }
    }
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        env={**base, "VAR_DIR": str(tmp_path), **env},
        timeout=120,
    )


def test_production_refuses_to_boot_without_a_secret_key(tmp_path):
    result = manage("check", env={"MAAS_ENV": "production", "ALLOWED_HOSTS": "maas.example.com"}, tmp_path=tmp_path)
    assert result.returncode != 0
    assert "MAAS_ENV=production needs SECRET_KEY" in result.stderr


def test_production_refuses_a_guessable_secret_key(tmp_path):
    env = {"MAAS_ENV": "production", "SECRET_KEY": "ab" * 40, "ALLOWED_HOSTS": "maas.example.com"}
    result = manage("check", env=env, tmp_path=tmp_path)
    assert result.returncode != 0 and "needs SECRET_KEY" in result.stderr


def test_production_refuses_without_allowed_hosts(tmp_path):
    result = manage("check", env={"MAAS_ENV": "production", "SECRET_KEY": secrets.token_urlsafe(64)}, tmp_path=tmp_path)
    assert result.returncode != 0 and "needs ALLOWED_HOSTS" in result.stderr


def test_production_passes_the_deployment_checklist(tmp_path):
    env = {
        "MAAS_ENV": "production",
        "SECRET_KEY": secrets.token_urlsafe(64),
        "ALLOWED_HOSTS": "maas.example.com",
        "DATABASE_URL": f"sqlite:///{tmp_path}/prod.sqlite3",
        "STRIPE_SECRET_KEY": "sk_live_placeholder",
        "STRIPE_WEBHOOK_SECRET": "whsec_placeholder",
    }
    result = manage("check", "--deploy", "--fail-level", "WARNING", env=env, tmp_path=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "System check identified no issues" in result.stdout


def test_embedded_default_keeps_everything_under_var_dir(tmp_path):
    code = (
        "from django.conf import settings as s; db = s.DATABASES['default']; print(db['ENGINE'], db['NAME']);"
        "print(s.CELERY_BROKER_URL, s.CELERY_BROKER_TRANSPORT_OPTIONS['data_folder_in']);"
        "print(s.CACHES['default']['BACKEND'], s.CACHES['default']['LOCATION']); print(s.MEDIA_ROOT)"
    )
    result = manage("shell", "--no-imports", "-c", code, env={}, tmp_path=tmp_path)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == f"django.db.backends.sqlite3 {tmp_path}/db.sqlite3"
    assert lines[1] == f"filesystem:// {tmp_path}/celery/queue"
    assert lines[2] == f"django.core.cache.backends.filebased.FileBasedCache {tmp_path}/cache"
    assert lines[3] == f"{tmp_path}/media"
    assert (tmp_path / "secret_key").stat().st_mode & 0o777 == 0o600


def test_services_are_chosen_by_url(tmp_path):
    code = (
        "from django.conf import settings as s; print(s.DATABASES['default']['ENGINE']);"
        "print(s.CACHES['default']['BACKEND']); print(s.CELERY_BROKER_URL)"
    )
    env = {"DATABASE_URL": "postgres://u@db.internal:5432/maas", "REDIS_URL": "redis://cache.internal:6379/0"}
    result = manage("shell", "--no-imports", "-c", code, env=env, tmp_path=tmp_path)
    assert result.stdout.splitlines() == [
        "django.db.backends.postgresql",
        "django.core.cache.backends.redis.RedisCache",
        "redis://cache.internal:6379/0",
    ]


def test_openapi_schema_is_valid_and_complete(tmp_path):
    result = manage(
        "spectacular",
        "--validate",
        "--fail-on-warn",
        "--file",
        str(tmp_path / "schema.yaml"),
        env={},
        tmp_path=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    schema = (tmp_path / "schema.yaml").read_text()
    for path in ("/api/orgs/{org}/keys/", "/api/orgs/{org}/members/{id}/", "/api/orgs/{org}/invitations/"):
        assert f"  {path}:" in schema
    for path in ("/v1/chat/completions", "/v1/embeddings", "/v1/responses", "/v1/organization/usage/embeddings"):
        assert f"  {path}:" in schema
    # The /v1 request bodies come from the wire protocol's models: what the gateway parses.
    for name in ("ChatCompletionRequest", "EmbeddingsRequest", "ResponsesRequest", "StreamOptions", "InputMessage"):
        assert f"    {name}:" in schema


def test_stripe_needs_its_keys(tmp_path):
    result = manage("check", env={"PAYMENT_PROVIDER": "stripe"}, tmp_path=tmp_path)
    assert result.returncode != 0 and "needs STRIPE_SECRET_KEY and STRIPE_WEBHOOK_SECRET" in result.stderr
    result = manage("check", env={"PAYMENT_PROVIDER": "paypal"}, tmp_path=tmp_path)
    assert result.returncode != 0 and "PAYMENT_PROVIDER must be fake or stripe" in result.stderr


def test_production_refuses_the_fake_payment_provider_unless_opted_in_by_name(tmp_path):
    prod = {
        "MAAS_ENV": "production",
        "SECRET_KEY": secrets.token_urlsafe(64),
        "ALLOWED_HOSTS": "maas.example.com",
        "DATABASE_URL": f"sqlite:///{tmp_path}/prod.sqlite3",
    }
    # Nothing said: production means Stripe, and Stripe needs its keys.
    result = manage("check", env=prod, tmp_path=tmp_path)
    assert result.returncode != 0 and "PAYMENT_PROVIDER=stripe needs STRIPE_SECRET_KEY" in result.stderr
    result = manage("check", env={**prod, "PAYMENT_PROVIDER": "fake"}, tmp_path=tmp_path)
    assert result.returncode != 0 and "refuses PAYMENT_PROVIDER=fake" in result.stderr
    code = "from django.conf import settings as s; print(s.PAYMENT_PROVIDER)"
    opted = {**prod, "PAYMENT_PROVIDER": "fake", "ALLOW_FAKE_PAYMENTS_IN_PRODUCTION_NOBODY_IS_CHARGED": "1"}
    result = manage("shell", "--no-imports", "-c", code, env=opted, tmp_path=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "fake"
