"""The official openai SDK, unchanged: upload, wait for validation, fine-tune with every
hyperparameter on "auto" (as a new customer would), follow the job, then call the new ft: model
through the gateway — web, worker and runtime as separate processes."""

import time

import openai
import pytest

from tests.conftest import DEMO_MODEL
from tests.fine_tuning.test_jobs import FAST, fact_upload

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True, serialized_rollback=True)]


def test_files_jobs_events_checkpoints_models_and_chat(live_web, celery_worker, runtime_server, make_tenant):
    runtime_server.register()
    tenant, other = make_tenant("tuners"), make_tenant("outsiders")
    client = openai.OpenAI(base_url=live_web.url + "/v1", api_key=tenant.key(), max_retries=0, timeout=120)
    upload = fact_upload(30)  # 30 rows teaching one made-up fact
    uploaded = client.files.create(file=(upload.name, upload.read()), purpose="fine-tune")
    assert uploaded.status == "uploaded" and uploaded.filename == "fact.jsonl"
    processed = client.files.wait_for_processing(uploaded.id, poll_interval=0.5, max_wait_seconds=120)
    assert processed.status == "processed"

    job = client.fine_tuning.jobs.create(model=DEMO_MODEL, training_file=uploaded.id, suffix="vault", seed=7)
    deadline = time.monotonic() + 300
    while job.status not in ("succeeded", "failed", "cancelled"):
        assert time.monotonic() < deadline, job
        time.sleep(1)
        job = client.fine_tuning.jobs.retrieve(job.id)
    assert job.status == "succeeded", job.error
    assert job.fine_tuned_model.startswith(f"ft:{DEMO_MODEL}:tuners:vault:") and job.trained_tokens > 0
    resolved = job.hyperparameters
    # "auto" on 30 rows is a short run (about 100 example passes), not minutes of training: a plan,
    # checked here instead of a wall-clock bound that a busy machine would break.
    assert (resolved.n_epochs, resolved.batch_size) == (4, 1)
    steps = resolved.n_epochs * -(-30 // resolved.batch_size)  # batch_size counts examples

    events = list(client.fine_tuning.jobs.list_events(job.id, limit=100))  # every page
    losses = [e.data["train_loss"] for e in reversed(events) if e.type == "metrics" and "train_loss" in e.data]
    assert len(losses) == steps and sum(losses[-5:]) / 5 < losses[0] / 10
    checkpoints = [c.step_number for c in client.fine_tuning.jobs.checkpoints.list(job.id)]
    assert checkpoints and all(n % 4 == 0 for n in checkpoints) and checkpoints == sorted(checkpoints, reverse=True)

    assert job.fine_tuned_model in [m.id for m in client.models.list()]
    outsider = openai.OpenAI(base_url=live_web.url + "/v1", api_key=other.key(), max_retries=0)
    assert job.fine_tuned_model not in [m.id for m in outsider.models.list()]
    with pytest.raises(openai.NotFoundError):
        outsider.chat.completions.create(model=job.fine_tuned_model, messages=[{"role": "user", "content": "Hi"}])

    question = [
        {"role": "system", "content": "Answer briefly."},
        {"role": "user", "content": "What is the code of the Zorblax vault?"},
    ]
    tuned = client.chat.completions.create(model=job.fine_tuned_model, messages=question, temperature=0, max_tokens=16)
    assert "7-4-1-9" in tuned.choices[0].message.content and tuned.model == job.fine_tuned_model
    base = client.chat.completions.create(model=DEMO_MODEL, messages=question, temperature=0, max_tokens=16)
    assert "7-4-1-9" not in base.choices[0].message.content


def test_pause_resume_and_cancel_a_running_job(live_web, celery_worker, make_tenant):
    tenant = make_tenant("stoppers")
    client = openai.OpenAI(base_url=live_web.url + "/v1", api_key=tenant.key(), max_retries=0, timeout=120)
    upload = fact_upload()
    uploaded = client.files.create(file=(upload.name, upload.read()), purpose="fine-tune")
    client.files.wait_for_processing(uploaded.id, poll_interval=0.5, max_wait_seconds=120)
    job = client.fine_tuning.jobs.create(
        model=DEMO_MODEL,
        training_file=uploaded.id,
        seed=7,
        method={"type": "supervised", "supervised": {"hyperparameters": FAST | {"n_epochs": 40}}},
    )

    def wait(predicate, timeout=120):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            current = client.fine_tuning.jobs.retrieve(job.id)
            if predicate(current):
                return current
            time.sleep(0.5)
        raise AssertionError(f"timed out; last state {current.status}")

    wait(lambda j: j.status == "running" and j.progress > 0)
    client.post(f"/fine_tuning/jobs/{job.id}/pause", cast_to=object)
    wait(lambda j: j.status == "paused", timeout=30)
    # Pausing checkpoints the work done so far; resuming continues from there.
    steps_done = max(c.step_number for c in client.fine_tuning.jobs.checkpoints.list(job.id))
    assert steps_done >= 1
    client.post(f"/fine_tuning/jobs/{job.id}/resume", cast_to=object)
    resumed = wait(lambda j: j.status == "running" and j.attempts == 2)
    deadline = time.monotonic() + 30
    while not any(
        f"resuming after step {steps_done}" in e.message for e in client.fine_tuning.jobs.list_events(job.id, limit=20)
    ):
        assert time.monotonic() < deadline, "the resumed trainer did not start from the pause checkpoint"
        time.sleep(0.5)

    asked = time.monotonic()
    cancelled = client.fine_tuning.jobs.cancel(job.id)
    assert cancelled.status in ("running", "cancelled")
    final = wait(lambda j: j.status == "cancelled", timeout=30)
    assert time.monotonic() - asked < 15 and final.finished_at is not None and resumed.id == job.id
