"""Reads of batches, for the console."""

from __future__ import annotations

from batches.models import Batch


def batches_of(organization_id: int, *, limit: int = 50) -> list[Batch]:
    """The organization's newest batches, with their files."""
    rows = Batch.all_orgs.filter(organization_id=organization_id).select_related("input_file")
    return list(rows.order_by("-created_at", "-id")[:limit])
