"""Disk retention for fine-tuning: what a job leaves behind, and for how long.

- When a job ends (succeeded, failed or cancelled), its work directory is trimmed at once to what
  may still be looked at: the checkpoints' adapter weights and state. The optimizer state (as large
  as the adapter twice over), the trainer's own copy of the final adapter (published to the
  adapter store already) and any half-written checkpoint go. A paused job keeps everything: it
  resumes from there.
- The sweep (beat, every FINE_TUNING_SWEEP_SECONDS) removes the work directories of jobs that ended
  more than FINE_TUNING_WORK_RETENTION_HOURS ago, staging directories (of checkpoints and of
  adapters being published) left for more than an hour by a killed write, and the adapters of
  deleted fine-tuned models, after asking every replica of the base model to unload them.
"""

from __future__ import annotations

import logging
import shutil
import time
from datetime import timedelta
from pathlib import Path

import httpx
from django.conf import settings
from django.utils import timezone

from catalog import selectors as catalog
from fine_tuning.models import FineTuningJob
from serving.models import Backend, ReplicaState

log = logging.getLogger("fine_tuning")
STALE_STAGING_SECONDS = 3600  # a checkpoint or adapter write takes seconds: an hour-old one is dead
FINISHED = (FineTuningJob.Status.SUCCEEDED, FineTuningJob.Status.FAILED, FineTuningJob.Status.CANCELLED)


def work_dir(job_id: str) -> Path:
    return settings.FINE_TUNING_WORK_DIR / "jobs" / job_id


def trim(job_id: str) -> None:
    """What an ended job's directory keeps: the checkpoints' adapters and state, the config."""
    root = work_dir(job_id)
    if not root.is_dir():
        return
    shutil.rmtree(root / "adapter", ignore_errors=True)
    checkpoints = root / "checkpoints"
    for path in checkpoints.iterdir() if checkpoints.is_dir() else []:
        if path.name.startswith("."):
            shutil.rmtree(path, ignore_errors=True)  # a write that never completed
        else:
            (path / "optimizer.safetensors").unlink(missing_ok=True)


def sweep() -> dict[str, int]:
    """One pass of the retention rules; how much of each kind it removed."""
    removed = {"job_dirs": 0, "staging_dirs": 0, "adapters": 0}
    cutoff = timezone.now() - timedelta(hours=settings.FINE_TUNING_WORK_RETENTION_HOURS)
    ended = FineTuningJob.all_orgs.filter(status__in=FINISHED, finished_at__lt=cutoff).values_list("pk", flat=True)
    for job_id in ended.iterator():
        if work_dir(job_id).is_dir():
            shutil.rmtree(work_dir(job_id), ignore_errors=True)
            removed["job_dirs"] += 1
    stale = time.time() - STALE_STAGING_SECONDS
    jobs_root = settings.FINE_TUNING_WORK_DIR / "jobs"
    candidates = list(jobs_root.glob("*/checkpoints/.step-*")) if jobs_root.is_dir() else []
    if settings.ADAPTER_STORE.is_dir():
        candidates += list(settings.ADAPTER_STORE.glob(".staging-*"))
    for path in candidates:
        if path.stat().st_mtime < stale:
            shutil.rmtree(path, ignore_errors=True)
            removed["staging_dirs"] += 1
    for model in catalog.deleted_fine_tuned_models():
        adapter = Path(model.adapter_location())
        if adapter.is_dir() and _unloaded_everywhere(model.pk, model.base_model_id):
            shutil.rmtree(adapter, ignore_errors=True)
            removed["adapters"] += 1
    if any(removed.values()):
        log.info("retention sweep removed %s", removed)
    return removed


def _unloaded_everywhere(model_id: str, base_model_id: str) -> bool:
    """Ask every replica of the base model to unload the adapter; True when none may still use it
    (unloaded, never loaded, or the replica is down and will start without it)."""
    live = [ReplicaState.REGISTERED, ReplicaState.STARTING, ReplicaState.READY, ReplicaState.DRAINING]
    for backend in Backend.objects.filter(base_model_id=base_model_id, enabled=True, state__in=live):
        headers = {"Authorization": f"Bearer {backend.api_key}"} if backend.api_key else {}
        try:
            response = httpx.post(
                f"{backend.url.rstrip('/')}/v1/unload_lora_adapter",
                json={"lora_name": model_id},
                headers=headers,
                timeout=10,
            )
        except httpx.ConnectError:
            continue  # not running: it has nothing loaded
        except httpx.HTTPError:
            return False
        if response.status_code not in (200, 400, 404):
            return False  # e.g. in use by a request right now: try again at the next sweep
    return True
