"""The pool's claim order on the real claim path (database rows, locks, the policy): fair share
between organizations, no head-of-line blocking, quotas, places in the queue."""

import json

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.utils import timezone

from compute import services as compute
from compute.models import Allocation, OrganizationCompute
from fine_tuning import jobs
from fine_tuning.models import FineTuningJob, JobEvent
from tests.conftest import DEMO_MODEL, key_client
from tests.fine_tuning.test_trainer import fact_rows

GIB = 2**30


def queue_jobs(tenant, count: int, django_capture_on_commit_callbacks, **body) -> list[str]:
    """Jobs created through the API and left queued (no worker is woken: the test claims)."""
    client = key_client(tenant.key(scopes=["files", "fine_tuning"]))
    rows = "".join(json.dumps(r) + "\n" for r in fact_rows(12)).encode()
    with django_capture_on_commit_callbacks(execute=True):
        upload = SimpleUploadedFile("fact.jsonl", rows)
        file_id = client.post("/v1/files", {"file": upload, "purpose": "fine-tune"}, format="multipart").json()["id"]
    created = []
    for _ in range(count):
        with django_capture_on_commit_callbacks(execute=False):
            response = client.post(
                "/v1/fine_tuning/jobs", {"model": DEMO_MODEL, "training_file": file_id, **body}, format="json"
            )
        assert response.status_code == 200, response.content
        created.append(response.json()["id"])
        FineTuningJob.all_orgs.filter(pk=created[-1]).update(status="queued", queued_at=timezone.now())
    return created


def end_run(job_id: str) -> None:
    """The run ends (here: cancelled at once), releasing its accelerators."""
    jobs.finish(job_id, worker="w", outcome=jobs.Outcome(code=143, stop="cancel"))


def one_cpu_node(memory: int = 8 * GIB, count: int = 1):
    return compute.register_node(name=compute.node_name(), hostname="h", accelerator="cpu", count=count, memory=memory)


def test_a_second_organization_is_not_queued_behind_the_first(tenant_a, tenant_b, django_capture_on_commit_callbacks):
    node = one_cpu_node()
    theirs = queue_jobs(tenant_a, 10, django_capture_on_commit_callbacks)
    mine = queue_jobs(tenant_b, 1, django_capture_on_commit_callbacks)
    positions = jobs.queue_positions(list(FineTuningJob.all_orgs.all()))
    assert positions[theirs[0]] == 1 and positions[mine[0]] == 2 and positions[theirs[1]] == 3
    first = jobs.claim_next("w", node)
    assert first.pk == theirs[0]
    assert jobs.claim_next("w", node) is None  # one accelerator, held
    end_run(first.pk)
    assert jobs.claim_next("w", node).pk == mine[0]  # second, not eleventh
    end_run(mine[0])
    assert jobs.claim_next("w", node).pk == theirs[1]
    held = Allocation.objects.get(holder=theirs[1], state="active")
    assert (held.organization_id, held.devices, held.kind) == (tenant_a.org.pk, [0], "training")


def test_a_heavier_share_or_a_higher_class_goes_first(tenant_a, tenant_b, django_capture_on_commit_callbacks):
    node = one_cpu_node()
    a = queue_jobs(tenant_a, 3, django_capture_on_commit_callbacks)
    b = queue_jobs(tenant_b, 3, django_capture_on_commit_callbacks)
    OrganizationCompute.objects.create(organization=tenant_b.org, priority=OrganizationCompute.Priority.HIGH)
    order = []
    for _ in range(4):
        job = jobs.claim_next("w", node)
        order.append(job.pk)
        end_run(job.pk)
    assert order == [b[0], b[1], b[2], a[0]]


def test_a_job_too_big_for_the_pool_waits_without_blocking_a_smaller_one(
    tenant_a, tenant_b, django_capture_on_commit_callbacks
):
    node = one_cpu_node(memory=1 * GIB)  # "auto" (1,024-token rows) needs about 1.7 GiB of the demo model
    big = queue_jobs(tenant_a, 1, django_capture_on_commit_callbacks)[0]
    small = queue_jobs(tenant_b, 1, django_capture_on_commit_callbacks, hyperparameters={"max_seq_len": 128})[0]
    assert FineTuningJob.all_orgs.get(pk=big).memory_bytes > GIB > FineTuningJob.all_orgs.get(pk=small).memory_bytes
    assert jobs.claim_next("w", node).pk == small
    waiting = FineTuningJob.all_orgs.get(pk=big)
    assert waiting.status == "queued" and waiting.wait_reason.startswith("It needs 1 accelerator with 1.")
    assert "more than any node in the pool has (the largest node has 1 of 1.0 GiB)" in waiting.wait_reason
    said = JobEvent.all_orgs.filter(job_id=big, data__waiting="too_big")
    assert said.count() == 1 and said.get().message == waiting.wait_reason
    end_run(small)
    assert jobs.claim_next("w", node) is None and said.count() == 1  # told once, not on every claim


def test_in_a_busy_pool_the_reaper_says_why_jobs_wait_before_any_worker_is_free(
    tenant_a, tenant_b, django_capture_on_commit_callbacks
):
    from fine_tuning import tasks

    node = one_cpu_node()
    running = queue_jobs(tenant_a, 1, django_capture_on_commit_callbacks)[0]
    assert jobs.claim_next("w", node).pk == running  # the only worker is busy from here on
    wide, next_up = queue_jobs(tenant_b, 1, django_capture_on_commit_callbacks, accelerators=2) + queue_jobs(
        tenant_b, 1, django_capture_on_commit_callbacks
    )
    assert FineTuningJob.all_orgs.get(pk=wide).wait_reason == ""  # no claim has looked at the queue
    tasks.reap_jobs()
    wide_job, next_job = FineTuningJob.all_orgs.get(pk=wide), FineTuningJob.all_orgs.get(pk=next_up)
    assert wide_job.wait_reason.startswith("It needs 2 accelerators") and "the largest node has 1 of" in (
        wide_job.wait_reason
    )
    assert next_job.wait_reason.startswith("Waiting for 1 accelerator") and "0/1 free" in next_job.wait_reason
    tasks.reap_jobs()
    assert JobEvent.all_orgs.filter(job_id=wide, data__waiting="too_big").count() == 1  # said once
    end_run(running)


def test_a_job_whose_worker_died_resumes_before_the_jobs_sent_after_it(
    tenant_a, django_capture_on_commit_callbacks, monkeypatch
):
    from datetime import timedelta

    monkeypatch.setattr("compute.allocations.wake_training", lambda: None)  # this test is the worker
    node = one_cpu_node()
    first, second = queue_jobs(tenant_a, 2, django_capture_on_commit_callbacks)
    assert jobs.claim_next("dead-worker", node).pk == first
    FineTuningJob.all_orgs.filter(pk=first).update(lease_expires_at=timezone.now() - timedelta(seconds=1))
    assert [j.pk for j in jobs.requeue_expired()] == [first]
    assert jobs.claim_next("w", node).pk == first  # not behind `second`, sent after it
    end_run(first)
    assert jobs.claim_next("w", node).pk == second
    end_run(second)


def test_a_job_needing_more_accelerators_than_are_free_lets_a_smaller_one_pass(
    tenant_a, tenant_b, django_capture_on_commit_callbacks
):
    node = one_cpu_node(count=2)
    running = queue_jobs(tenant_a, 1, django_capture_on_commit_callbacks)[0]
    assert jobs.claim_next("w", node).pk == running
    wide = queue_jobs(tenant_b, 1, django_capture_on_commit_callbacks, accelerators=2)[0]
    narrow = queue_jobs(tenant_b, 1, django_capture_on_commit_callbacks)[0]
    assert jobs.claim_next("w", node).pk == narrow
    reason = FineTuningJob.all_orgs.get(pk=wide).wait_reason
    assert reason.startswith("Waiting for 2 accelerators with") and "1/2 free" in reason
    end_run(running)
    end_run(narrow)
    taken = jobs.claim_next("w", node)
    assert taken.pk == wide and Allocation.objects.get(holder=wide, state="active").devices == [0, 1]


def test_a_quota_holds_an_organization_to_its_accelerators(tenant_a, tenant_b, django_capture_on_commit_callbacks):
    node = one_cpu_node(count=2)
    OrganizationCompute.objects.create(organization=tenant_a.org, max_accelerators=1)
    a = queue_jobs(tenant_a, 2, django_capture_on_commit_callbacks)
    b = queue_jobs(tenant_b, 1, django_capture_on_commit_callbacks)
    assert jobs.claim_next("w", node).pk == a[0]
    assert jobs.claim_next("w", node).pk == b[0]
    end_run(b[0])
    assert jobs.claim_next("w", node) is None  # an accelerator is free, but not for alpha
    assert "quota is 1 accelerators at once and 1 are in use" in FineTuningJob.all_orgs.get(pk=a[1]).wait_reason


@pytest.mark.parametrize("accelerators", [0, 9, "two", True])
def test_accelerators_out_of_range_are_refused(tenant_a, accelerators, django_capture_on_commit_callbacks):
    client = key_client(tenant_a.key(scopes=["files", "fine_tuning"]))
    rows = "".join(json.dumps(r) + "\n" for r in fact_rows(12)).encode()
    with django_capture_on_commit_callbacks(execute=True):
        upload = SimpleUploadedFile("fact.jsonl", rows)
        file_id = client.post("/v1/files", {"file": upload, "purpose": "fine-tune"}, format="multipart").json()["id"]
    response = client.post(
        "/v1/fine_tuning/jobs",
        {"model": DEMO_MODEL, "training_file": file_id, "accelerators": accelerators},
        format="json",
    )
    assert response.status_code == 400
    assert (response.json()["error"]["code"], response.json()["error"]["param"]) == (
        "invalid_accelerators",
        "accelerators",
    )
    assert not FineTuningJob.all_orgs.exists()


def test_queued_jobs_have_an_estimated_start_from_measured_throughput(
    tenant_a, tenant_b, django_capture_on_commit_callbacks, monkeypatch
):
    from datetime import timedelta

    monkeypatch.setattr("compute.allocations.wake_training", lambda: None)  # this test is the worker
    node = one_cpu_node()
    running = queue_jobs(tenant_a, 1, django_capture_on_commit_callbacks)[0]
    assert jobs.claim_next("w", node).pk == running
    first, second, third = queue_jobs(tenant_b, 3, django_capture_on_commit_callbacks)
    FineTuningJob.all_orgs.filter(pk__in=[first, second, third]).update(estimated_tokens=3000)
    client = key_client(tenant_b.key(scopes=["fine_tuning"]))

    def seconds_to_start(job_id: str) -> tuple[int, float | None]:
        body = client.get(f"/v1/fine_tuning/jobs/{job_id}").json()
        start = body["estimated_start"]
        return body["queue_position"], None if start is None else start - timezone.now().timestamp()

    # Nothing measured yet: no start is guessed.
    assert [seconds_to_start(j) for j in (first, second, third)] == [(1, None), (2, None), (3, None)]

    # The running job has reported 1,000 tokens in 10 s and 60 s to go: the first queued job starts
    # when it ends, each next one 30 s later (3,000 tokens at the 100 tokens/s measured).
    FineTuningJob.all_orgs.filter(pk=running).update(
        trained_tokens=1000, train_seconds=10.0, estimated_finish=timezone.now() + timedelta(seconds=60)
    )
    starts = [seconds_to_start(j) for j in (first, second, third)]
    assert [position for position, _ in starts] == [1, 2, 3]
    for (_, wait), expected in zip(starts, (60, 90, 120), strict=True):
        assert expected - 3 <= wait <= expected + 1, starts

    # Once a job of this model has succeeded, its throughput is the measure (here 50 tokens/s).
    end_run(running)
    FineTuningJob.all_orgs.filter(pk=running).update(
        status="succeeded", trained_tokens=500, train_seconds=10.0, finished_at=timezone.now()
    )
    assert jobs.claim_next("w", node).pk == first
    FineTuningJob.all_orgs.filter(pk=first).update(estimated_finish=timezone.now() + timedelta(seconds=60))
    (position, wait), (last_position, last_wait) = seconds_to_start(second), seconds_to_start(third)
    assert position == 1 and 57 <= wait <= 61 and last_position == 2 and 117 <= last_wait <= 121, (wait, last_wait)
    end_run(first)


def test_a_measured_run_of_the_model_replaces_the_coarse_memory_estimate(tenant_a, django_capture_on_commit_callbacks):
    from fine_tuning import hyperparameters as hp

    one_cpu_node()
    first = FineTuningJob.all_orgs.get(pk=queue_jobs(tenant_a, 1, django_capture_on_commit_callbacks)[0])
    coarse, used = first.memory_bytes, first.hyperparameters
    assert coarse == hp.memory_per_accelerator(first.base_model.parameters, used, 1) > 0  # nothing measured yet

    # Earlier successful runs of the model: one held fewer tokens a step than a new job will (it
    # says nothing about it), one as many, one four times as many.
    measured = {"fewer": (used["max_seq_len"] // 2, 1 * GIB), "same": (used["max_seq_len"], 2 * GIB)}
    measured["more"] = (used["max_seq_len"] * 4, 5 * GIB)
    past = queue_jobs(tenant_a, 3, django_capture_on_commit_callbacks)
    for job_id, (max_seq_len, peak) in zip(past, measured.values(), strict=True):
        FineTuningJob.all_orgs.filter(pk=job_id).update(
            status="succeeded",
            finished_at=timezone.now(),
            peak_memory_bytes=peak,
            hyperparameters={**used, "max_seq_len": max_seq_len},
        )
    new = FineTuningJob.all_orgs.get(pk=queue_jobs(tenant_a, 1, django_capture_on_commit_callbacks)[0])
    assert new.memory_bytes == int(2 * GIB * 1.1)  # the closest run holding at least as much, a tenth more
    body = key_client(tenant_a.key(scopes=["fine_tuning"])).get(f"/v1/fine_tuning/jobs/{new.pk}").json()
    assert body["memory_per_accelerator"] == new.memory_bytes and body["peak_memory_bytes"] is None
