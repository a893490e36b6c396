"""Reads of fine-tuning objects, shared by the management API and the console."""

from __future__ import annotations

from django.db.models import Prefetch

from fine_tuning import jobs
from fine_tuning.models import Dataset, DatasetVersion, File, FineTuningJob


def files(organization_id: int):
    """The organization's training files that are not deleted, newest first."""
    return File.all_orgs.filter(organization_id=organization_id, deleted_at=None).order_by("-created_at", "-id")


def file(organization_id: int, file_id: str) -> File | None:
    return files(organization_id).filter(pk=file_id).first()


def jobs_of(organization_id: int, *, active_only: bool = False, limit: int = 100) -> list[FineTuningJob]:
    """The organization's jobs (only those not finished, if asked), newest first, each with
    `queue_position` (None unless queued)."""
    rows = FineTuningJob.all_orgs.filter(organization_id=organization_id).select_related("base_model")
    if active_only:
        rows = rows.exclude(status__in=FineTuningJob.FINISHED)
    rows = list(rows.order_by("-created_at")[:limit])
    positions = jobs.queue_positions(rows)
    for row in rows:
        row.queue_position = positions.get(row.pk)
    return rows


def job(organization_id: int, job_id: str) -> FineTuningJob | None:
    found = FineTuningJob.all_orgs.filter(organization_id=organization_id, pk=job_id).first()
    if found is not None:
        found.queue_position = jobs.queue_position(found)
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
