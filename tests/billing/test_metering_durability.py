"""Nothing served goes unbilled: with the database unreachable for 30 s while a web process serves
completions, and across a restart of that process, every served request reaches the ledger, once."""

import time

import httpx
import pytest
from django.db import connection

from billing import services as billing
from billing.models import UsageEvent
from serving import services
from serving.models import Backend
from tenancy.audit import Actor
from tests.conftest import DEMO_MODEL, _database_url, start_web, usage_row
from tests.serving.stub_upstream import Upstream
from tests.tcp_gate import TcpGate

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True, serialized_rollback=True)]
OUTAGE_SECONDS = 30


@pytest.fixture
def gate():
    if connection.vendor != "postgresql":
        pytest.skip("needs PostgreSQL reached over TCP (a database server that can go away)")
    settings = connection.settings_dict
    relay = TcpGate(settings["HOST"] or "127.0.0.1", int(settings["PORT"] or 5432))
    yield relay
    relay.shut()
    # The web processes' sessions end once their sockets are cut; wait, so the test database can go.
    deadline = time.monotonic() + 10
    with connection.cursor() as cursor:
        while time.monotonic() < deadline:
            cursor.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
            if cursor.fetchone()[0] == 0:
                break
            time.sleep(0.2)


def complete(web, key: str, stream: bool) -> str:
    body = {"model": DEMO_MODEL, "messages": [{"role": "user", "content": "Say hi."}], "stream": stream}
    response = httpx.post(
        web.url + "/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {key}"}, timeout=30
    )
    assert response.status_code == 200, response.text
    return response.headers["x-request-id"]


def landed(web, request_id: str) -> None:
    try:
        usage_row(request_id, timeout=30)
    except AssertionError as error:
        raise AssertionError(f"{error}; the web process said:\n{web.log()[-6000:]}") from None


def test_usage_survives_a_database_outage_and_a_restart(make_tenant, tmp_path, gate):
    upstream = Upstream("durable", words=3, delay=0)
    backend = services.register_backend(name="durable", url=upstream.url, base_model=DEMO_MODEL, engine="openai")
    Backend.objects.filter(pk=backend.pk).update(healthy=True)
    tenant = make_tenant("durable")
    # Invoiced without limits: no budget needs the database to admit a request (a prepaid one fails
    # closed while the database is away: tested with the budgets).
    billing.configure_account(tenant.org.pk, mode="invoiced", actor=Actor())
    key = tenant.key()
    env = {
        "DATABASE_URL": _database_url().replace(
            f"@{connection.settings_dict['HOST'] or '127.0.0.1'}:{connection.settings_dict['PORT'] or 5432}/",
            f"@127.0.0.1:{gate.port}/",
        ),
        "METERING_SPOOL_DIR": str(tmp_path / "spool"),
        "METERING_DRAIN_SECONDS": "0.2",
        "GATEWAY_ROUTE_CACHE_SECONDS": "600",
        "DB_POOL_TIMEOUT": "2",
    }
    web = start_web(env)
    try:
        served = [complete(web, key, stream=False)]
        usage_row(served[0])  # the key, the route and the price are known to the process now

        gate.shut()
        ends = time.monotonic() + OUTAGE_SECONDS
        while time.monotonic() < ends:
            served.append(complete(web, key, stream=len(served) % 2 == 0))
            time.sleep(0.5)
        assert not UsageEvent.all_orgs.filter(request_id__in=served[1:]).exists()  # the ledger was away
        gate.open()
        for request_id in served:
            landed(web, request_id)

        gate.shut()  # away again, and the process is restarted
        served_before_restart = [complete(web, key, stream=n % 2 == 0) for n in range(5)]
        web.process.terminate()
        web.process.wait(60)
        assert list((tmp_path / "spool").glob("*.jsonl"))  # what the stopping process could not write
    finally:
        web.process.kill()
    gate.open()
    successor = start_web(env)
    try:
        for request_id in served_before_restart:
            landed(successor, request_id)
    finally:
        successor.process.terminate()
        successor.process.wait(30)
    everything = served + served_before_restart
    rows = UsageEvent.all_orgs.filter(request_id__in=everything)
    assert rows.count() == len(everything) == len(set(everything))
    assert all(row.prompt_tokens > 0 and row.completion_tokens > 0 for row in rows)
    assert all(row.cost > 0 and row.price_id is not None for row in rows)
