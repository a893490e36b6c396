"""Reads of the compute fleet: a worker's state, and the training capacity the console shows."""

from __future__ import annotations

from datetime import timedelta

from django.conf import settings
from django.utils import timezone

from compute.models import Worker


def state(worker: Worker) -> str:
    """stopped (said so), offline (missed three heartbeats), busy (on a job) or idle."""
    if worker.stopped_at:
        return "stopped"
    if worker.last_heartbeat_at < timezone.now() - timedelta(seconds=3 * settings.WORKER_HEARTBEAT_SECONDS):
        return "offline"
    return "busy" if worker.current_job_id else "idle"


def training_capacity() -> dict[str, int]:
    """How many workers that train (those consuming the fine-tuning queue) are idle and busy now."""
    counts = {"idle": 0, "busy": 0}
    for worker in Worker.objects.filter(stopped_at=None):
        if settings.FINE_TUNING_QUEUE in (worker.queues or []):
            found = state(worker)
            if found in counts:
                counts[found] += 1
    return counts
