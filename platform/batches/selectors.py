"""Reads of batches: the API's and the console's, and the runner's."""

from __future__ import annotations

from batches.models import Batch


def batches_of(organization_id: int, *, limit: int = 50) -> list[Batch]:
    """The organization's newest batches, with their files."""
    rows = Batch.all_orgs.filter(organization_id=organization_id).select_related("input_file")
    return list(rows.order_by("-created_at", "-id")[:limit])


def batch(organization_id: int, batch_id: str) -> Batch | None:
    return Batch.all_orgs.filter(organization_id=organization_id, pk=batch_id).first()


def page(organization_id: int, after: Batch | None, limit: int) -> tuple[list[Batch], bool]:
    """Newest first, those after `after`, and whether there are more."""
    rows = Batch.all_orgs.filter(organization_id=organization_id).order_by("-created_at", "-id")
    if after is not None:
        rows = rows.filter(created_at__lte=after.created_at).exclude(created_at=after.created_at, id__gte=after.id)
    found = list(rows[: limit + 1])
    return found[:limit], len(found) > limit


def validating(limit: int = 20) -> list[Batch]:
    """Batches waiting for their input file's validation, oldest first."""
    return list(Batch.all_orgs.filter(status=Batch.Status.VALIDATING).order_by("created_at")[:limit])
