"""Shared fixtures. Data is set up through the services, as the platform itself does."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from django.conf import settings
from rest_framework.test import APIClient

from tenancy import services
from tenancy.audit import Actor
from tenancy.models import Organization
from tenancy.roles import Role

REPO = Path(__file__).resolve().parents[1]
PASSWORD = "correct-horse-battery-staple"


@dataclass
class Tenant:
    org: Organization
    owner: object

    def add_member(self, email: str, role: str = Role.MEMBER):
        from django.contrib.auth import get_user_model

        user = get_user_model().objects.create_user(email, PASSWORD)
        issued = services.invite(
            organization_id=self.org.pk, email=email, role=role, actor_role=Role.OWNER, actor=Actor(user=self.owner)
        )
        services.accept_invitation(token=issued.token, user=user, actor=Actor(user=user))
        return user

    def key(self, scopes=None, **kwargs) -> str:
        return services.create_api_key(
            organization_id=self.org.pk,
            name="test key",
            scopes=scopes,
            created_by_id=self.owner.pk,
            actor=Actor(user=self.owner),
            **kwargs,
        ).plaintext


@pytest.fixture
def make_tenant(db):
    def make(slug: str) -> Tenant:
        user, org = services.sign_up(
            email=f"owner@{slug}.test", password=PASSWORD, organization_name=slug, actor=Actor()
        )
        return Tenant(org=org, owner=user)

    return make


@pytest.fixture
def tenant_a(make_tenant) -> Tenant:
    return make_tenant("alpha")


@pytest.fixture
def tenant_b(make_tenant) -> Tenant:
    return make_tenant("beta")


@pytest.fixture
def api():
    return APIClient()


def session_client(user) -> APIClient:
    client = APIClient(enforce_csrf_checks=False)
    client.force_login(user)
    return client


def key_client(key: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {key}")
    return client


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _database_url() -> str:
    from django.db import connection

    db = connection.settings_dict
    if db["ENGINE"] == "django.db.backends.postgresql":
        auth = db["USER"] + (f":{db['PASSWORD']}" if db["PASSWORD"] else "")
        return f"postgres://{auth}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}"
    return f"sqlite:///{db['NAME']}"


@dataclass
class LiveServer:
    url: str
    process: subprocess.Popen

    def get(self, path: str, **kwargs) -> httpx.Response:
        return httpx.get(self.url + path, timeout=30, **kwargs)


def start_web(extra_env: dict | None = None) -> LiveServer:
    """A real uvicorn web process on the test database and the shared cache."""
    port = _free_port()
    env = {
        **os.environ,
        "DATABASE_URL": _database_url(),
        "VAR_DIR": str(settings.VAR_DIR),
        "PYTHONPATH": f"{REPO / 'platform'}{os.pathsep}{REPO}",
        **(extra_env or {}),
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "maas.asgi:application", "--port", str(port), "--no-access-log"],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    url = f"http://127.0.0.1:{port}"
    for _ in range(120):
        if process.poll() is not None:
            raise RuntimeError(f"web process exited: {process.stderr.read().decode()[-3000:]}")
        try:
            if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                return LiveServer(url, process)
        except httpx.HTTPError:
            time.sleep(0.25)
    process.kill()
    raise RuntimeError("web process did not start in 30 s")


@pytest.fixture(scope="session")
def live_web(django_db_setup, django_db_blocker):
    server = start_web()
    yield server
    server.process.terminate()
    server.process.wait(10)
