"""Disk retention: the sweep removes ended jobs' work directories after the retention time,
half-written checkpoints and adapters left by killed writes, and the adapters of deleted
fine-tuned models (once no replica can still use them) — and nothing else."""

import os
import socket
import time
from datetime import timedelta

from django.utils import timezone

from catalog import services as catalog
from fine_tuning import retention
from fine_tuning.models import FineTuningJob
from serving import services as serving
from tenancy.audit import Actor
from tests.conftest import DEMO_MODEL
from tests.fine_tuning.test_jobs import _queued_job


def old(path, seconds=2 * retention.STALE_STAGING_SECONDS):
    then = time.time() - seconds
    os.utime(path, (then, then))


def test_the_sweep_removes_what_the_rules_say_and_keeps_the_rest(
    tenant_a, django_capture_on_commit_callbacks, settings, tmp_path
):
    settings.FINE_TUNING_WORK_DIR = tmp_path / "work"
    settings.ADAPTER_STORE = tmp_path / "adapters"
    ended_long_ago, ended_recently, running = (
        _queued_job(tenant_a, django_capture_on_commit_callbacks) for _ in range(3)
    )
    now = timezone.now()
    FineTuningJob.all_orgs.filter(pk=ended_long_ago).update(
        status="succeeded", finished_at=now - timedelta(hours=settings.FINE_TUNING_WORK_RETENTION_HOURS + 1)
    )
    FineTuningJob.all_orgs.filter(pk=ended_recently).update(status="failed", finished_at=now - timedelta(hours=1))
    FineTuningJob.all_orgs.filter(pk=running).update(status="running")
    for job_id in (ended_long_ago, ended_recently, running):
        (retention.work_dir(job_id) / "checkpoints" / "step-000004").mkdir(parents=True)
    dead_write = retention.work_dir(running) / "checkpoints" / ".step-000008.123"
    live_write = retention.work_dir(running) / "checkpoints" / ".step-000012.123"
    dead_publish = settings.ADAPTER_STORE / ".staging-ftjob-x-1"
    for path in (dead_write, live_write, dead_publish):
        path.mkdir(parents=True)
    old(dead_write)
    old(dead_publish)

    for name, deleted in (("gone", True), ("kept", False)):
        catalog.register_fine_tuned_model(
            f"ft:{DEMO_MODEL}:alpha:{name}:x",
            organization_id=tenant_a.org.pk,
            base_model_id=DEMO_MODEL,
            job_id=running,
            adapter_path=name,
            actor=Actor(),
        )
        (settings.ADAPTER_STORE / name).mkdir(parents=True)
        if deleted:
            catalog.delete_fine_tuned_model(
                f"ft:{DEMO_MODEL}:alpha:{name}:x", organization_id=tenant_a.org.pk, actor=Actor()
            )
    with socket.socket() as s:  # a replica that is down: it will start without the adapter
        s.bind(("127.0.0.1", 0))
        serving.register_backend(name="down", url=f"http://127.0.0.1:{s.getsockname()[1]}", base_model=DEMO_MODEL)

    removed = retention.sweep()
    assert removed == {"job_dirs": 1, "staging_dirs": 2, "adapters": 1}
    assert not retention.work_dir(ended_long_ago).exists()
    assert retention.work_dir(ended_recently).exists() and retention.work_dir(running).exists()
    assert not dead_write.exists() and live_write.exists() and not dead_publish.exists()
    assert not (settings.ADAPTER_STORE / "gone").exists() and (settings.ADAPTER_STORE / "kept").exists()
    assert retention.sweep() == {"job_dirs": 0, "staging_dirs": 0, "adapters": 0}
