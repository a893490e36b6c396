"""Reads of fine-tuning objects, shared by the management API and the console."""

from __future__ import annotations

from fine_tuning import jobs
from fine_tuning.models import FineTuningJob


def active_jobs(organization_id: int) -> list[FineTuningJob]:
    """Jobs not finished yet (validating, queued, running, paused), newest first, each with its
    queue position (`queue_position`, None unless queued)."""
    rows = list(
        FineTuningJob.all_orgs.filter(organization_id=organization_id)
        .exclude(status__in=FineTuningJob.FINISHED)
        .order_by("-created_at")
    )
    positions = jobs.queue_positions(rows)
    for row in rows:
        row.queue_position = positions.get(row.pk)
    return rows
