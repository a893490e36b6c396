"""Fault tolerance: a worker killed with SIGKILL after the first checkpoint. The job's lease
expires, the reaper queues it again, another worker claims it and the trainer resumes from that
checkpoint; the job succeeds and its tokens are counted once."""

import os
import signal
import subprocess
import sys
import time

import pytest
from django.conf import settings as django_settings

from catalog.loader import load_model
from fine_tuning import jobs, services
from fine_tuning.models import Checkpoint, FineTuningJob, JobEvent
from fine_tuning.trainer.data import collate, epoch_steps, read_examples
from tenancy import scope
from tenancy.audit import Actor
from tests.conftest import DEMO_MODEL, DEMO_SOURCE, REPO, _database_url
from tests.fine_tuning.test_jobs import FAST, fact_upload

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True, serialized_rollback=True)]
QUEUE = f"gpu-kill-{os.getpid()}"
DEFAULT_QUEUE = f"default-kill-{os.getpid()}"  # only this test's workers consume these two


def start_worker(name: str) -> subprocess.Popen:
    env = {
        **os.environ,
        "DATABASE_URL": _database_url(),
        "VAR_DIR": str(django_settings.VAR_DIR),
        "PYTHONPATH": f"{REPO / 'platform'}{os.pathsep}{REPO}",
        "FINE_TUNING_QUEUE": QUEUE,
        "FINE_TUNING_LEASE_SECONDS": "6",
        "FINE_TUNING_CHECKPOINT_EVERY": "2",
    }
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "maas",
            "worker",
            "-Q",
            f"{QUEUE},{DEFAULT_QUEUE}",
            "-c",
            "1",
            "--pool",
            "solo",
            "-n",
            f"{name}-{os.getpid()}@%h",
            "-l",
            "INFO",
        ],
        cwd=REPO,
        env=env,
        stdout=(django_settings.VAR_DIR / f"worker-{name}.log").open("w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def test_sigkilled_worker_job_resumes_elsewhere_and_succeeds(make_tenant, settings):
    from maas.celery import app

    tenant = make_tenant("resilient")
    settings.FINE_TUNING_QUEUE, settings.FINE_TUNING_LEASE_SECONDS = QUEUE, 6
    upload = fact_upload()
    upload.sha256 = "0" * 64
    with scope.organization(tenant.org.pk):
        file = services.upload_file(organization_id=tenant.org.pk, uploaded=upload, purpose="fine-tune", actor=Actor())
        file = services.validate_file(file.pk)
        # From here on, tasks go through the broker to this test's own workers.
        app.conf.task_always_eager, app.conf.task_default_queue = False, DEFAULT_QUEUE
        try:
            first = start_worker("first")
            job = jobs.create(
                organization_id=tenant.org.pk,
                model=DEMO_MODEL,
                training_file=file.pk,
                seed=3,
                hyperparameters=FAST | {"n_epochs": 4},
                actor=Actor(),
            )
            wait_for(lambda: Checkpoint.all_orgs.filter(job_id=job.pk).exists(), 60, "the first checkpoint")
            os.killpg(first.pid, signal.SIGKILL)  # the worker and its trainer, without warning
            first.wait(10)
            killed_at = FineTuningJob.all_orgs.get(pk=job.pk)
            assert killed_at.status == "running" and killed_at.attempts == 1
            resumed_after = Checkpoint.all_orgs.filter(job_id=job.pk).order_by("-step_number").first().step_number
            second = start_worker("second")
            try:
                time.sleep(7)  # the lease runs out
                assert [j.pk for j in jobs.requeue_expired()] == [job.pk]
                done = wait_for(
                    lambda: FineTuningJob.all_orgs.filter(pk=job.pk, status__in=FineTuningJob.FINISHED).first(),
                    240,
                    "the job to finish",
                )
            finally:
                os.killpg(second.pid, signal.SIGTERM)
                second.wait(30)
        finally:
            app.conf.task_always_eager, app.conf.task_default_queue = True, "default"
    assert done.status == "succeeded", done.error
    assert done.attempts == 2
    messages = list(JobEvent.all_orgs.filter(job=done).values_list("message", flat=True))
    assert any("stopped answering" in m for m in messages)
    started = [m for m in messages if m.startswith("Training ")]
    assert f"resuming after step {resumed_after}" in started[0]  # newest first: the resumed run
    total_steps = int(started[0].split()[1])
    assert resumed_after >= 2 and total_steps - resumed_after < total_steps  # fewer steps redone than a restart
    loaded = load_model(DEMO_SOURCE, django_settings.MODEL_CACHE_DIR)
    examples = read_examples(django_settings.MEDIA_ROOT / file.storage_key, loaded.tokenizer, 128)
    expected = sum(
        collate(examples, step).tokens for epoch in range(4) for step in epoch_steps(len(examples), epoch, 3, 4)
    )
    assert done.trained_tokens == expected  # counted once, though part of the run happened twice
    assert done.effective_training_time < 1
