"""Claims racing on PostgreSQL: many workers pulling at once never take one accelerator twice, and
never run one job twice, on one node or across nodes."""

import threading

import pytest
from django.db import connection

from compute import allocations
from compute import services as compute
from compute.models import Allocation
from fine_tuning import jobs
from fine_tuning.models import FineTuningJob
from tests.compute.test_scheduling import queue_jobs

pytestmark = pytest.mark.django_db(transaction=True, serialized_rollback=True)
GIB = 2**30


def claim_all_at_once(claimers: list[tuple[str, object]]) -> list[str | None]:
    start, taken = threading.Barrier(len(claimers)), [None] * len(claimers)

    def claim(index: int, worker: str, node) -> None:
        try:
            start.wait()
            job = jobs.claim_next(worker, node)
            taken[index] = job.pk if job else None
        except Exception as exc:  # shown by the assertion below
            taken[index] = exc
        finally:
            connection.close()  # this thread's own connection, back to the pool

    threads = [threading.Thread(target=claim, args=(i, w, n)) for i, (w, n) in enumerate(claimers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    failures = [t for t in taken if isinstance(t, Exception)]
    assert not failures, failures
    return taken


def test_racing_claims_take_each_accelerator_and_each_job_once(
    tenant_a, tenant_b, monkeypatch, django_capture_on_commit_callbacks
):
    if connection.vendor != "postgresql":
        pytest.skip("row locks need PostgreSQL; SQLite serialises writers anyway")
    # The threads below are the only workers: creating a job must not wake one inline (tasks run
    # eagerly in tests, and outside a test transaction on_commit runs at once).
    monkeypatch.setattr(allocations, "wake_training", lambda: None)
    one = compute.register_node(name="node-one", hostname="a", accelerator="cpu", count=2, memory=8 * GIB)
    two = compute.register_node(name="node-two", hostname="b", accelerator="cpu", count=1, memory=8 * GIB)
    queued = queue_jobs(tenant_a, 4, django_capture_on_commit_callbacks) + queue_jobs(
        tenant_b, 4, django_capture_on_commit_callbacks
    )
    claimers = [(f"w{i}", one) for i in range(4)] + [(f"v{i}", two) for i in range(3)]
    taken = [t for t in claim_all_at_once(claimers) if t]
    assert len(taken) == len(set(taken)) == 3  # three accelerators in the pool, three jobs running
    live = Allocation.objects.exclude(state="ended")
    assert sorted((a.node.name, d) for a in live for d in a.devices) == [
        ("node-one", 0),
        ("node-one", 1),
        ("node-two", 0),
    ]
    assert set(FineTuningJob.all_orgs.filter(status="running").values_list("pk", flat=True)) == set(taken)
    assert {FineTuningJob.all_orgs.get(pk=t).organization_id for t in taken} == {tenant_a.org.pk, tenant_b.org.pk}
    assert set(taken) <= set(queued)
