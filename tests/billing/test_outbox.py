"""The metering outbox: spooled records reach the ledger once, whoever drains them and whatever
died in between."""

import os
import signal
import subprocess
import sys
import textwrap

import pytest

from billing import outbox, services
from billing.models import UsageEvent
from tests.billing.usage import usage_record
from tests.conftest import REPO


def record(tenant, request_id: str, **overrides) -> dict:
    organization_id = overrides.pop("organization_id", tenant.org.pk)
    return usage_record(organization_id, request_id, created_at=1_790_000_000.5, **overrides)


@pytest.fixture
def spool_dir(tmp_path, settings):
    settings.METERING_SPOOL_DIR = tmp_path / "spool"
    return settings.METERING_SPOOL_DIR


@pytest.mark.django_db
def test_spooled_records_are_drained_once(tenant_a, spool_dir):
    for n in range(5):
        services.meter(record(tenant_a, f"req_{n}"))
    services.meter(record(tenant_a, "req_0", completion_tokens=999))  # a replay of the same request
    assert UsageEvent.all_orgs.count() == 0  # spooled, not yet in the ledger
    from io import StringIO

    from django.core.management import call_command

    out = StringIO()
    call_command("drain_usage", stdout=out)  # the operator's command, as the README gives it
    assert out.getvalue().strip() == "6 usage record(s) drained into the ledger."
    rows = {r.request_id: r.completion_tokens for r in UsageEvent.all_orgs.all()}
    assert rows == {f"req_{n}": 5 for n in range(5)}
    assert list(spool_dir.glob("*.jsonl")) == []
    assert services.drain_outbox() == 0


@pytest.mark.django_db
def test_a_failed_drain_keeps_the_records(tenant_a, spool_dir):
    services.meter(record(tenant_a, "req_kept"))

    def unreachable(records):
        raise ConnectionError("database unreachable")

    with pytest.raises(ConnectionError):
        outbox.drain(unreachable)
    assert len(list(spool_dir.glob("*.jsonl"))) == 1
    assert services.drain_outbox() == 1
    assert UsageEvent.all_orgs.filter(request_id="req_kept").exists()


WRITER = textwrap.dedent(
    """
    import os, sys, time
    sys.path[:0] = [{platform!r}, {repo!r}]
    os.environ["DJANGO_SETTINGS_MODULE"] = "maas.settings"
    import django; django.setup()
    from django.conf import settings
    settings.METERING_SPOOL_DIR = {spool!r}
    from billing import services
    for n in range(3):
        services.meter({{"request_id": f"child_{{n}}", "organization_id": {org}, "route": "completions",
                         "model": "m", "base_model": "m", "status_code": 200, "outcome": "ok", "latency_ms": 1,
                         "created_at": 1790000000}})
    print("spooled", flush=True)
    time.sleep(60)
    """
)


@pytest.mark.django_db
def test_a_live_writers_file_waits_and_a_killed_writers_file_is_drained(tenant_a, spool_dir):
    script = WRITER.format(platform=str(REPO / "platform"), repo=str(REPO), spool=str(spool_dir), org=tenant_a.org.pk)
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, env=os.environ.copy())
    try:
        assert child.stdout.readline().strip() == "spooled"
        assert services.drain_outbox() == 0  # still open by its (live) writer: not complete yet
        assert UsageEvent.all_orgs.count() == 0
        child.send_signal(signal.SIGKILL)
        child.wait(10)
        assert services.drain_outbox() == 3  # the kernel released the dead writer's lock
        assert sorted(UsageEvent.all_orgs.values_list("request_id", flat=True)) == ["child_0", "child_1", "child_2"]
    finally:
        child.kill()


def test_a_torn_last_line_is_skipped(tmp_path):
    path = tmp_path / "host.1.0.jsonl"
    path.write_bytes(b'{"request_id": "a"}\n{"request_id": "b"}\n{"request_')
    assert [r["request_id"] for r in outbox.read_records(path)] == ["a", "b"]


@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_a_record_the_ledger_refuses_is_set_aside_and_holds_back_nothing(tenant_a, spool_dir):
    services.meter(record(tenant_a, "req_fine_1"))
    services.meter(record(tenant_a, "req_orphan", organization_id=tenant_a.org.pk + 10_000))  # no such org
    services.meter(record(tenant_a, "req_fine_2"))
    assert services.drain_outbox() == 3
    assert sorted(UsageEvent.all_orgs.values_list("request_id", flat=True)) == ["req_fine_1", "req_fine_2"]
    rejected = (spool_dir / "rejected").glob("*.jsonl")
    lines = [line for path in rejected for line in path.read_text().splitlines()]
    assert len(lines) == 1 and '"req_orphan"' in lines[0]
    assert list(spool_dir.glob("*.jsonl")) == []
