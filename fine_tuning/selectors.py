"""Reads of fine-tuning objects, shared by the management API and the console."""

from __future__ import annotations

from django.db.models import Prefetch

from fine_tuning import queue
from fine_tuning.models import Dataset, DatasetVersion, File, FineTuningJob


def files(organization_id: int):
    """The organization's training files that are not deleted, newest first."""
    return File.all_orgs.filter(organization_id=organization_id, deleted_at=None).order_by("-created_at", "-id")


def file(organization_id: int, file_id: str) -> File | None:
    return files(organization_id).filter(pk=file_id).first()


def jobs_of(organization_id: int, *, active_only: bool = False, limit: int = 100) -> list[FineTuningJob]:
    """The organization's jobs (only those not finished, if asked), newest first, each with
    `queue_position` and `estimated_start` (None unless queued)."""
    rows = FineTuningJob.all_orgs.filter(organization_id=organization_id).select_related("base_model")
    if active_only:
        rows = rows.exclude(status__in=FineTuningJob.FINISHED)
    rows = list(rows.order_by("-created_at")[:limit])
    _place(rows)
    return rows


def _place(rows: list[FineTuningJob]) -> None:
    places = queue.places(rows)
    for row in rows:
        found = places.get(row.pk)
        row.queue_position = found.position if found else None
        row.estimated_start = found.estimated_start if found else None


def job(organization_id: int, job_id: str) -> FineTuningJob | None:
    found = FineTuningJob.all_orgs.filter(organization_id=organization_id, pk=job_id).first()
    if found is not None:
        _place([found])
    return found


def loss_curve(found: FineTuningJob) -> dict:
    """Training and validation loss by step, from the job's metric events (a resumed run's steps
    replace the interrupted run's)."""
    training: dict[int, float] = {}
    validation: dict[int, float] = {}
    for data in found.events.filter(type="metrics").order_by("created_at").values_list("data", flat=True):
        if not data or data.get("step") is None:
            continue
        if data.get("train_loss") is not None:
            training[data["step"]] = data["train_loss"]
        if data.get("valid_loss") is not None and "fine_tuned" not in data:
            validation[data["step"]] = data["valid_loss"]
    steps = sorted(set(training) | set(validation))
    return {
        "type": "line",
        "labels": steps,
        "datasets": [
            {"label": "training loss", "data": [training.get(s) for s in steps], "spanGaps": True},
            {"label": "validation loss", "data": [validation.get(s) for s in steps], "spanGaps": True},
        ],
        "y": "loss",
    }


def dataset_named(organization_id: int, name: str) -> Dataset | None:
    return Dataset.all_orgs.filter(organization_id=organization_id, name=name).first()


def datasets(organization_id: int) -> list[Dataset]:
    """The organization's datasets with their versions (newest first) and each version's file."""
    versions = Prefetch("versions", queryset=DatasetVersion.all_orgs.select_related("file").order_by("-number"))
    return list(Dataset.all_orgs.filter(organization_id=organization_id).prefetch_related(versions).order_by("name"))


def queue_summary(now) -> dict:
    """How many jobs wait, and how long the longest has waited (seconds), across organizations."""
    waiting = FineTuningJob.all_orgs.filter(status=FineTuningJob.Status.QUEUED)
    oldest = waiting.order_by("queued_at").values_list("queued_at", flat=True).first()
    return {"queued": waiting.count(), "oldest": (now - oldest).total_seconds() if oldest else 0.0}


def effective_training_time(organization_id: int, *, since) -> float | None:
    """Productive training seconds over wall seconds from first start to the end, across the
    organization's jobs that ended since then (None before any)."""
    rows = FineTuningJob.all_orgs.filter(
        organization_id=organization_id, finished_at__gte=since, started_at__isnull=False
    ).values_list("train_seconds", "started_at", "finished_at")
    productive = sum(seconds for seconds, _, _ in rows)
    wall = sum((finished - started).total_seconds() for _, started, finished in rows)
    return productive / wall if wall > 0 else None
