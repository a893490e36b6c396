"""Training and serving on one pool, with separate processes (web, GPU worker, node agent) on the
real demo model: the pool (two CPU accelerators) trains a fine-tune when another organization
publishes a dedicated endpoint with two replicas; the job checkpoints, gives its accelerator up and
waits with its reason; the agent starts both engines and the endpoint becomes ready; when the
endpoint stops, its engines end and the job resumes from its checkpoint and succeeds, every step
trained and billed once."""

import time

import openai
import pytest

from billing.models import UsageEvent
from compute.models import Allocation
from fine_tuning.models import FineTuningJob, JobEvent
from tests.conftest import DEMO_MODEL, session_client
from tests.fine_tuning.test_jobs import fact_upload
from tests.serving.test_endpoints import wait_dedicated_ready

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True, serialized_rollback=True)]


def wait_job(job_id: str, condition, timeout: float = 300) -> FineTuningJob:
    deadline = time.monotonic() + timeout
    while True:
        job = FineTuningJob.all_orgs.get(pk=job_id)
        if condition(job):
            return job
        assert time.monotonic() < deadline, (job.status, job.progress, job.wait_reason)
        time.sleep(0.3)


def test_an_endpoint_preempts_training_which_resumes_from_its_checkpoint(
    live_web, celery_worker, node_agent, make_tenant
):
    trainer, publisher = make_tenant("trainers"), make_tenant("publishers")
    client = openai.OpenAI(base_url=live_web.url + "/v1", api_key=trainer.key(), max_retries=0, timeout=120)
    upload = fact_upload(30)
    uploaded = client.files.create(file=(upload.name, upload.read()), purpose="fine-tune")
    client.files.wait_for_processing(uploaded.id, poll_interval=0.5, max_wait_seconds=120)
    job_id = client.fine_tuning.jobs.create(model=DEMO_MODEL, training_file=uploaded.id, seed=3).id
    # Running, with a checkpoint behind it (the worker checkpoints every 4 steps).
    wait_job(job_id, lambda j: j.status == "running" and j.progress >= 0.1)
    assert Allocation.objects.get(holder=job_id, state="active").kind == "training"

    owner = session_client(publisher.owner)
    created = owner.post(
        f"/api/orgs/{publisher.org.slug}/endpoints/",
        {
            "name": "reserved",
            "model": DEMO_MODEL,
            "billing_mode": "dedicated",
            "replicas": 2,
            "defaults": {"max_tokens": 5},
        },
        format="json",
    )
    assert created.status_code == 201, created.content
    endpoint_id = created.json()["id"]
    wait_dedicated_ready(endpoint_id)
    job = wait_job(job_id, lambda j: j.status == "queued")
    assert job.preemptions == 1 and "Waiting for 1 accelerator" in job.wait_reason
    preempted = JobEvent.all_orgs.get(job_id=job_id, data__preempted=True)
    assert preempted.level == "warn" and f"endpoint replica {endpoint_id}-" in preempted.message
    held = Allocation.objects.filter(holder__startswith=endpoint_id, state="active").order_by("devices")
    assert [(a.kind, a.organization_id, a.devices) for a in held] == [
        ("serving", publisher.org.pk, [0]),
        (
            "serving",
            publisher.org.pk,
            [1],
        ),
    ]
    stopped_at = max(
        e.data["step"] for e in JobEvent.all_orgs.filter(job_id=job_id, type="metrics") if "step" in e.data
    )

    reply = openai.OpenAI(base_url=live_web.url + "/v1", api_key=publisher.key(), max_retries=0).chat.completions
    assert reply.create(model=endpoint_id, messages=[{"role": "user", "content": "Hi"}]).choices[0].message.content

    assert owner.post(f"/api/orgs/{publisher.org.slug}/endpoints/{endpoint_id}/stop/").json()["status"] == "stopped"
    job = wait_job(job_id, lambda j: j.status in ("succeeded", "failed", "cancelled"))
    assert job.status == "succeeded", job.error
    resumed = JobEvent.all_orgs.filter(job_id=job_id, message__startswith="Training ").order_by("created_at")
    assert [e.data.get("resumed_from") for e in resumed] == [None, stopped_at]
    steps = [e.data["step"] for e in JobEvent.all_orgs.filter(job_id=job_id, type="metrics") if "train_loss" in e.data]
    assert sorted(steps) == list(range(1, max(steps) + 1))  # each step trained once
    last = JobEvent.all_orgs.filter(job_id=job_id, type="metrics", data__step=max(steps)).exclude(data__train_loss=None)
    assert last.get().data["trained_tokens"] == job.trained_tokens
    ledger = UsageEvent.all_orgs.get(request_id=f"train:{job_id}")
    assert ledger.training_tokens == job.trained_tokens and ledger.outcome == "ok"
    assert not Allocation.objects.exclude(state="ended").filter(holder__startswith=endpoint_id).exists()
