"""Fine-tuning jobs through /v1/fine_tuning/jobs, run in-process (tasks inline) on the real model."""

import json

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from catalog.models import FineTunedModel
from fine_tuning.models import FineTuningJob, JobEvent
from tests.conftest import DEMO_MODEL, key_client
from tests.fine_tuning.test_trainer import fact_rows

# For the tests about the job machinery (kills, pauses) rather than learning: fewer, larger steps
# than "auto" would take. Tests that check the model learned run with every hyperparameter "auto".
FAST = {"n_epochs": 6, "batch_size": 4, "max_seq_len": 128}


def fact_upload(n: int = 12) -> SimpleUploadedFile:
    rows = fact_rows(n)
    return SimpleUploadedFile("fact.jsonl", "".join(json.dumps(r) + "\n" for r in rows).encode())


@pytest.fixture
def tuned(tenant_a, django_capture_on_commit_callbacks, settings):
    settings.FINE_TUNING_CHECKPOINT_EVERY = 4
    client = key_client(tenant_a.key(scopes=["files", "fine_tuning", "models:read"]))
    with django_capture_on_commit_callbacks(execute=True):
        file_id = client.post("/v1/files", {"file": fact_upload(), "purpose": "fine-tune"}, format="multipart").json()[
            "id"
        ]
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        created = client.post(
            "/v1/fine_tuning/jobs",
            {
                "model": DEMO_MODEL,
                "training_file": file_id,
                "suffix": "Vault Bot",
                "seed": 7,
            },
            format="json",
        )
    return client, created, callbacks


@pytest.mark.slow
def test_job_trains_and_registers_a_model_for_its_organization_only(tuned, tenant_b):
    client, created, _ = tuned
    assert created.status_code == 200, created.content
    body = created.json()
    assert body["object"] == "fine_tuning.job" and body["status"] == "validating_files"
    # Everything "auto": 12 examples -> 9 epochs (examples x epochs >= 100), batch size 1.
    assert body["estimated_tokens"] > 0 and body["hyperparameters"]["n_epochs"] == 9
    assert body["hyperparameters"]["batch_size"] == 1 and body["hyperparameters"]["lora_target_modules"] == "all-linear"
    job = client.get(f"/v1/fine_tuning/jobs/{body['id']}").json()
    assert job["status"] == "succeeded", job
    assert job["fine_tuned_model"].startswith(f"ft:{DEMO_MODEL}:alpha:vault-bot:")
    assert job["trained_tokens"] > 0 and job["finished_at"] >= job["created_at"] and job["error"] is None
    assert job["attempts"] == 1 and 0 < job["effective_training_time"] <= 1
    assert 100 * 2**20 < job["peak_memory_bytes"] < 64 * 2**30  # the trainer's measured peak (RSS on a CPU)
    events, after = [], ""
    while True:  # every page, newest first
        page = client.get(f"/v1/fine_tuning/jobs/{body['id']}/events?limit=100{after}").json()
        events += page["data"]
        if not page["has_more"]:
            break
        after = f"&after={page['data'][-1]['id']}"
    losses = [
        e["data"]["train_loss"]
        for e in reversed(events)
        if e["type"] == "metrics" and "train_loss" in (e["data"] or {})
    ]
    assert len(losses) == 108 and sum(losses[-5:]) / 5 < losses[0] / 10  # 9 epochs x 12 steps
    assert events[0]["message"] == "The job has successfully completed"
    checkpoints = client.get(f"/v1/fine_tuning/jobs/{body['id']}/checkpoints").json()["data"]
    assert [c["step_number"] for c in checkpoints][:3] == [104, 100, 96]  # every 4 steps, newest first
    assert checkpoints[0]["fine_tuned_model_checkpoint"] == f"{job['fine_tuned_model']}:ckpt-step-104"
    assert "train_loss" in checkpoints[0]["metrics"]
    listed = [m["id"] for m in client.get("/v1/models").json()["data"]]
    assert job["fine_tuned_model"] in listed
    other = key_client(tenant_b.key())
    assert job["fine_tuned_model"] not in [m["id"] for m in other.get("/v1/models").json()["data"]]
    assert other.get(f"/v1/models/{job['fine_tuned_model']}").status_code == 404
    assert other.get(f"/v1/fine_tuning/jobs/{body['id']}").status_code == 404
    assert other.delete(f"/v1/models/{job['fine_tuned_model']}").status_code == 404
    tuned_model = FineTunedModel.all_orgs.get(pk=job["fine_tuned_model"])
    from django.conf import settings

    assert (settings.ADAPTER_STORE / tuned_model.adapter_path / "adapter_model.safetensors").is_file()
    # The ended job's work directory keeps only what the retention rule keeps: its config and the
    # checkpoints' adapters and state — no optimizer state, no second copy of the final adapter.
    from fine_tuning import retention

    kept = sorted(str(p.relative_to(retention.work_dir(body["id"]))) for p in retention.work_dir(body["id"]).rglob("*"))
    assert kept and all(
        name in ("config.json", "checkpoints")
        or (
            name.startswith("checkpoints/step-")
            and name.endswith(
                (
                    "step-000100",
                    "step-000104",
                    "adapter_model.safetensors",
                    "adapter_config.json",
                    "README.md",
                    "trainer_state.json",
                )
            )
        )
        for name in kept
    ), kept
    assert not [name for name in kept if name.endswith("optimizer.safetensors") or name.startswith("adapter")]
    deleted = client.delete(f"/v1/models/{job['fine_tuned_model']}")
    assert deleted.json() == {"id": job["fine_tuned_model"], "object": "model", "deleted": True}
    assert job["fine_tuned_model"] not in [m["id"] for m in client.get("/v1/models").json()["data"]]

    # Training usage: one ledger row for the job, with its trained tokens; a retried finish (the
    # same outcome again, as after a worker crash between commit and acknowledgement) adds none.
    from billing.models import UsageEvent
    from fine_tuning import jobs

    rows = list(UsageEvent.all_orgs.filter(route="fine_tuning.jobs"))
    assert [(r.request_id, r.training_tokens, r.outcome, r.model) for r in rows] == [
        (f"train:{body['id']}", job["trained_tokens"], "ok", job["fine_tuned_model"])
    ]
    assert rows[0].organization_id == body_org(client) and str(rows[0].api_key_id) == created_key(body["id"])
    FineTuningJob.all_orgs.filter(pk=body["id"]).update(status="running", lease_owner="w")  # as if not yet finished
    again = jobs.Outcome(code=0, trained_tokens=10**6, train_seconds=1.0, fine_tuned_model=job["fine_tuned_model"])
    assert jobs.finish(body["id"], worker="w", outcome=again) == "succeeded"
    assert UsageEvent.all_orgs.filter(route="fine_tuning.jobs").count() == 1
    assert UsageEvent.all_orgs.get(route="fine_tuning.jobs").training_tokens == job["trained_tokens"]


def test_bad_job_requests_are_refused_at_create(tenant_a, tenant_b, django_capture_on_commit_callbacks):
    client = key_client(tenant_a.key(scopes=["files", "fine_tuning"]))
    with django_capture_on_commit_callbacks(execute=True):
        good = client.post("/v1/files", {"file": fact_upload(), "purpose": "fine-tune"}, format="multipart").json()
        few = client.post("/v1/files", {"file": fact_upload(3), "purpose": "fine-tune"}, format="multipart").json()
    theirs = key_client(tenant_b.key(scopes=["files", "fine_tuning"]))

    def create(**body):
        return client.post(
            "/v1/fine_tuning/jobs", {"model": DEMO_MODEL, "training_file": good["id"], **body}, format="json"
        )

    cases = [
        # What is not there (or is another organization's) is a 404, as any reference to it.
        (create(model="gpt-4o"), 404, "model_not_found", "model"),
        (create(training_file="file-nope"), 404, "file_not_found", "training_file"),
        (create(training_file=few["id"]), 400, "invalid_file", "training_file"),
        (create(hyperparameters={"n_epochs": 0}), 400, "invalid_hyperparameters", "hyperparameters.n_epochs"),
        (create(hyperparameters={"lora_r": "big"}), 400, "invalid_hyperparameters", "hyperparameters.lora_r"),
        (create(hyperparameters={"warmup": 3}), 400, "invalid_hyperparameters", "hyperparameters.warmup"),
        (create(suffix="x" * 65), 400, "invalid_suffix", "suffix"),
        (create(method={"type": "dpo"}), 400, "invalid_method", "method"),
        (
            theirs.post("/v1/fine_tuning/jobs", {"model": DEMO_MODEL, "training_file": good["id"]}, format="json"),
            404,
            "file_not_found",
            "training_file",
        ),
    ]
    for response, status, code, param in cases:
        assert response.status_code == status, response.content
        assert (response.json()["error"]["code"], response.json()["error"]["param"]) == (code, param)
    assert FineTuningJob.all_orgs.count() == 0


def test_active_job_limit_and_cancel_before_running(tenant_a, settings, django_capture_on_commit_callbacks):
    settings.FINE_TUNING_MAX_ACTIVE_JOBS = 2
    client = key_client(tenant_a.key(scopes=["files", "fine_tuning"]))
    with django_capture_on_commit_callbacks(execute=True):
        file_id = client.post("/v1/files", {"file": fact_upload(), "purpose": "fine-tune"}, format="multipart").json()[
            "id"
        ]
    # Created but not dispatched (no on-commit callbacks run): they stay in validating_files.
    first = client.post("/v1/fine_tuning/jobs", {"model": DEMO_MODEL, "training_file": file_id}, format="json").json()
    client.post("/v1/fine_tuning/jobs", {"model": DEMO_MODEL, "training_file": file_id}, format="json")
    third = client.post("/v1/fine_tuning/jobs", {"model": DEMO_MODEL, "training_file": file_id}, format="json")
    assert third.status_code == 429 and third.json()["error"]["code"] == "too_many_active_jobs"
    cancelled = client.post(f"/v1/fine_tuning/jobs/{first['id']}/cancel").json()
    assert cancelled["status"] == "cancelled"
    assert client.post(f"/v1/fine_tuning/jobs/{first['id']}/cancel").status_code == 409
    again = client.post("/v1/fine_tuning/jobs", {"model": DEMO_MODEL, "training_file": file_id}, format="json")
    assert again.status_code == 200
    assert first["hyperparameters"]["n_epochs"] == 9  # auto: 12 examples x 9 epochs >= 100


def test_queue_positions_take_the_same_queries_for_any_number_of_jobs(tenant_a, django_assert_num_queries):
    from datetime import timedelta

    from django.utils import timezone

    from fine_tuning import jobs
    from tenancy import scope
    from tenancy.audit import Actor

    upload = fact_upload()
    upload.sha256 = "0" * 64
    from fine_tuning import services

    with scope.organization(tenant_a.org.pk):
        file = services.upload_file(
            organization_id=tenant_a.org.pk, uploaded=upload, purpose="fine-tune", actor=Actor()
        )
        services.validate_file(file.pk)
        created = [
            jobs.create(organization_id=tenant_a.org.pk, model=DEMO_MODEL, training_file=file.pk, actor=Actor())
            for _ in range(3)
        ]
    now = timezone.now()
    for offset, job in enumerate(created):
        FineTuningJob.all_orgs.filter(pk=job.pk).update(status="queued", queued_at=now + timedelta(seconds=offset))
    FineTuningJob.all_orgs.filter(pk=created[0].pk).update(status="running")
    rows = list(FineTuningJob.all_orgs.filter(pk__in=[j.pk for j in created]))
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    with CaptureQueriesContext(connection) as one:
        jobs.queue_positions([r for r in rows if r.pk == created[2].pk])
    with django_assert_num_queries(len(one)):
        positions = jobs.queue_positions(rows)
    assert positions == {created[1].pk: 1, created[2].pk: 2}
    listed = key_client(tenant_a.key(scopes=["fine_tuning"])).get("/v1/fine_tuning/jobs").json()["data"]
    assert {j["id"]: j["queue_position"] for j in listed} == {created[0].pk: None, created[1].pk: 1, created[2].pk: 2}


def body_org(client) -> int:
    from tenancy.models import Organization

    return Organization.objects.get(slug="alpha").pk


def created_key(job_id: str) -> str:
    return str(FineTuningJob.all_orgs.get(pk=job_id).created_by_key_id)


def test_a_job_cancelled_before_it_ran_is_metered_with_no_tokens(tenant_a, django_capture_on_commit_callbacks):
    from billing.models import UsageEvent
    from fine_tuning import jobs
    from tenancy.audit import Actor

    job_id = _queued_job(tenant_a, django_capture_on_commit_callbacks)
    jobs.cancel(job_id, organization_id=tenant_a.org.pk, actor=Actor(user=tenant_a.owner))
    row = UsageEvent.all_orgs.get(request_id=f"train:{job_id}")
    assert (row.training_tokens, row.outcome) == (0, "cancelled")


def test_a_job_its_organization_cannot_afford_is_refused_and_an_affordable_one_holds_its_cost(
    tenant_a, django_capture_on_commit_callbacks
):
    from billing import services as billing
    from billing.models import Account, Reservation
    from fine_tuning import jobs
    from tenancy.audit import Actor

    billing.grant_credits(tenant_a.org.pk, "-4.99999", reason="nearly spent", actor=Actor())  # 10,000 nano-units left
    client = key_client(tenant_a.key(scopes=["files", "fine_tuning"]))
    with django_capture_on_commit_callbacks(execute=True):
        file_id = client.post("/v1/files", {"file": fact_upload(), "purpose": "fine-tune"}, format="multipart").json()[
            "id"
        ]
    refused = client.post("/v1/fine_tuning/jobs", {"model": DEMO_MODEL, "training_file": file_id}, format="json")
    assert refused.status_code == 429, refused.content
    assert refused.json()["error"]["code"] == "insufficient_quota"
    assert "estimated to cost" in refused.json()["error"]["message"]
    assert not FineTuningJob.all_orgs.exists() and not Reservation.all_orgs.exists()
    billing.grant_credits(tenant_a.org.pk, "1", reason="top-up", actor=Actor())
    job_id = _queued_job(tenant_a, django_capture_on_commit_callbacks)
    hold = Reservation.all_orgs.get(request_id=f"train:{job_id}")
    estimated = FineTuningJob.all_orgs.get(pk=job_id).estimated_tokens
    assert hold.amount == estimated * 1000  # the demo model's training price: 1,000 nano-units a token
    jobs.cancel(job_id, organization_id=tenant_a.org.pk, actor=Actor(user=tenant_a.owner))
    assert not Reservation.all_orgs.exists()  # the job's ledger row settled it
    assert Account.all_orgs.get(organization=tenant_a.org).reserved == 0


def test_the_reaper_resends_a_waiting_job_once_per_interval(tenant_a, django_capture_on_commit_callbacks, settings):
    """A queued job no worker took is re-sent once per FINE_TUNING_REDISPATCH_SECONDS, not on every
    tick of the reaper (queued_at never moves, so the old rule re-sent it every 15 s)."""
    from datetime import timedelta

    from django.utils import timezone

    from fine_tuning import jobs

    job_id = _queued_job(tenant_a, django_capture_on_commit_callbacks)
    long_ago = timezone.now() - timedelta(seconds=settings.FINE_TUNING_REDISPATCH_SECONDS * 3)
    FineTuningJob.all_orgs.filter(pk=job_id).update(status="queued", queued_at=long_ago)
    sent = []
    for _ in range(3):  # three ticks of the reaper in a row
        with django_capture_on_commit_callbacks(execute=False) as callbacks:
            jobs.requeue_expired()
        sent.append(len(callbacks))
    assert sent == [1, 0, 0]
    assert FineTuningJob.all_orgs.get(pk=job_id).queued_at == long_ago  # its place in the queue is kept


def _queued_job(tenant, django_capture_on_commit_callbacks) -> str:
    """A job created and left queued (its dispatch not run)."""
    client = key_client(tenant.key(scopes=["files", "fine_tuning"]))
    with django_capture_on_commit_callbacks(execute=True):
        file_id = client.post("/v1/files", {"file": fact_upload(), "purpose": "fine-tune"}, format="multipart").json()[
            "id"
        ]
    with django_capture_on_commit_callbacks(execute=False):
        job_id = client.post(
            "/v1/fine_tuning/jobs",
            {"model": DEMO_MODEL, "training_file": file_id, "hyperparameters": FAST},
            format="json",
        ).json()["id"]
    FineTuningJob.all_orgs.filter(pk=job_id).update(status="queued")
    return job_id


def test_a_job_interrupted_too_often_fails_with_the_reason(tenant_a, django_capture_on_commit_callbacks, settings):
    from datetime import timedelta

    from django.utils import timezone

    from billing.models import UsageEvent
    from fine_tuning import jobs

    job_id = _queued_job(tenant_a, django_capture_on_commit_callbacks)
    FineTuningJob.all_orgs.filter(pk=job_id).update(
        status="running",
        lease_owner="gone",
        lease_expires_at=timezone.now() - timedelta(seconds=1),
        attempts=settings.FINE_TUNING_MAX_ATTEMPTS,
    )
    with django_capture_on_commit_callbacks(execute=True):
        assert jobs.requeue_expired() == []  # not sent to a worker again
    job = FineTuningJob.all_orgs.get(pk=job_id)
    assert job.status == "failed" and job.error["code"] == "too_many_interruptions" and job.dispatched_at is None
    assert UsageEvent.all_orgs.get(request_id=f"train:{job_id}").outcome == "failed"


@pytest.mark.slow
def test_a_failing_supervisor_never_leaves_its_trainer_running(
    tenant_a, monkeypatch, settings, django_capture_on_commit_callbacks
):
    """The database goes away under the runner (here: renewing the lease raises): the runner fails,
    and its trainer child is stopped with it instead of training on unsupervised while the reaper
    gives the job to another worker."""
    from django.db import OperationalError

    from fine_tuning import jobs, runner

    settings.FINE_TUNING_LEASE_SECONDS = 3  # renew every second
    job_id = _queued_job(tenant_a, django_capture_on_commit_callbacks)
    started = []
    real_start = runner.start_trainer
    monkeypatch.setattr(runner, "start_trainer", lambda *args: started.append(real_start(*args)) or started[-1])

    def database_gone(job_id, worker):
        raise OperationalError("server closed the connection unexpectedly")

    monkeypatch.setattr(jobs, "renew", database_gone)
    from tenancy import scope

    with scope.organization(tenant_a.org.pk), pytest.raises(OperationalError):  # as the task runs it
        runner.run(job_id, worker="test-worker")
    assert started and started[0].poll() is not None  # the trainer did not outlive its supervisor


@pytest.mark.slow
def test_a_job_without_a_validation_file_shows_before_and_after(tenant_a, django_capture_on_commit_callbacks, settings):
    """120 examples and no validation file: 12 are held out, and the job object and its events show
    the validation loss of the base model and of the fine-tuned one."""
    client = key_client(tenant_a.key(scopes=["files", "fine_tuning"]))
    with django_capture_on_commit_callbacks(execute=True):
        file_id = client.post(
            "/v1/files", {"file": fact_upload(120), "purpose": "fine-tune"}, format="multipart"
        ).json()["id"]
    with django_capture_on_commit_callbacks(execute=True):
        job_id = client.post(
            "/v1/fine_tuning/jobs",
            {"model": DEMO_MODEL, "training_file": file_id, "hyperparameters": {"n_epochs": 1, "batch_size": 8}},
            format="json",
        ).json()["id"]
    job = client.get(f"/v1/fine_tuning/jobs/{job_id}").json()
    assert job["status"] == "succeeded", job["error"]
    evaluation = job["evaluation"]
    assert evaluation["validation"] == {"source": "split", "examples": 12}
    assert evaluation["fine_tuned"]["valid_loss"] < evaluation["base"]["valid_loss"]
    messages = [e["message"] for e in client.get(f"/v1/fine_tuning/jobs/{job_id}/events?limit=100").json()["data"]]
    assert any(m.startswith("No validation file: 12 of the training examples are held out") for m in messages)
    assert any("(base model) ->" in m and "(fine-tuned)" in m for m in messages)


def test_a_runner_that_lost_the_lease_writes_nothing(tenant_a, django_capture_on_commit_callbacks):
    """The reaper gave the job to another worker: the old runner's trainer lines (checkpoint,
    progress, events) are not recorded, and the runner is told to stop."""
    from fine_tuning import runner
    from fine_tuning.models import Checkpoint, JobEvent

    job_id = _queued_job(tenant_a, django_capture_on_commit_callbacks)
    FineTuningJob.all_orgs.filter(pk=job_id).update(status="running", lease_owner="new-worker")
    job = FineTuningJob.all_orgs.get(pk=job_id)
    events = JobEvent.all_orgs.filter(job_id=job_id).count()
    lines = [
        {"type": "checkpoint", "step": 4, "path": "/x", "metrics": {}},
        {"type": "metrics", "step": 5, "total_steps": 9, "train_loss": 1.0, "trained_tokens": 50, "train_seconds": 1.0},
        {"type": "warning", "code": "overfitting", "message": "…"},
    ]
    assert [runner._record(job, line, "old-worker") for line in lines] == [False, False, False]
    assert not Checkpoint.all_orgs.filter(job_id=job_id).exists()
    assert JobEvent.all_orgs.filter(job_id=job_id).count() == events
    assert FineTuningJob.all_orgs.get(pk=job_id).progress == 0
    assert runner._record(job, lines[0], "new-worker") is True  # the lease holder's lines are recorded


def test_a_jobs_charge_never_passes_what_it_held(tenant_a, django_capture_on_commit_callbacks):
    """Held for its estimate at creation (the reference tokenizer's count), the job trained more
    (its own tokenizer, say): it is billed what the hold covers, and the credit stays covered."""
    from billing.models import Account, Reservation, UsageEvent
    from fine_tuning import jobs

    job_id = _queued_job(tenant_a, django_capture_on_commit_callbacks)
    held = Reservation.all_orgs.get(request_id=f"train:{job_id}").amount
    estimated = FineTuningJob.all_orgs.get(pk=job_id).estimated_tokens
    before = Account.all_orgs.get(organization=tenant_a.org).credit
    FineTuningJob.all_orgs.filter(pk=job_id).update(
        status="running", lease_owner="w", trained_tokens=3 * estimated, train_seconds=1.0
    )
    jobs.finish(job_id, worker="w", outcome=jobs.Outcome(code=0, stop="cancel"))
    row = UsageEvent.all_orgs.get(request_id=f"train:{job_id}")
    assert row.training_tokens == estimated and row.cost == held
    assert Account.all_orgs.get(organization=tenant_a.org).credit == before - held
    assert FineTuningJob.all_orgs.get(pk=job_id).trained_tokens == 3 * estimated  # what it did, as it was


def test_a_run_the_platform_cut_short_is_queued_again_until_the_attempts_run_out(
    tenant_a, django_capture_on_commit_callbacks, settings
):
    """A trainer killed by a signal (an OOM kill) or a run across nodes that lost a node: nothing in
    the job was wrong, so it resumes from its checkpoint, as after a lost worker; with no attempt
    left it fails."""
    from fine_tuning import jobs

    job_id = _queued_job(tenant_a, django_capture_on_commit_callbacks)
    killed = jobs.Outcome(code=-9, interrupted="its trainer was killed (signal 9), not by anything in the job")
    FineTuningJob.all_orgs.filter(pk=job_id).update(status="running", lease_owner="w1", attempts=1)
    with django_capture_on_commit_callbacks(execute=False) as sent:
        assert jobs.finish(job_id, worker="w1", outcome=killed) == "queued"
    assert len(sent) == 1  # dispatched again
    job = FineTuningJob.all_orgs.get(pk=job_id)
    assert (job.status, job.lease_owner, job.finished_at, job.error) == ("queued", "", None, None)
    warned = JobEvent.all_orgs.get(job_id=job_id, level="warn")
    assert warned.message.startswith("Interrupted: its trainer was killed (signal 9)")

    FineTuningJob.all_orgs.filter(pk=job_id).update(
        status="running", lease_owner="w2", attempts=settings.FINE_TUNING_MAX_ATTEMPTS
    )
    assert jobs.finish(job_id, worker="w2", outcome=killed) == "failed"
    assert FineTuningJob.all_orgs.get(pk=job_id).error["code"] == "training_failed"
