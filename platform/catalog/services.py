"""Writes to the catalog that tenants make."""

from __future__ import annotations

from django.db import transaction
from django.utils import timezone

from catalog.models import FineTunedModel
from tenancy import audit
from tenancy.audit import Actor
from tenancy.errors import NotFound


@transaction.atomic
def delete_fine_tuned_model(model_id: str, *, organization_id: int, actor: Actor) -> FineTunedModel:
    row = (
        FineTunedModel.all_orgs.select_for_update()
        .filter(pk=model_id, organization_id=organization_id, deleted_at=None)
        .first()
    )
    if row is None:
        raise NotFound(
            f"The model '{model_id}' does not exist or you do not have access to it.", "model_not_found", "model"
        )
    row.deleted_at = timezone.now()
    row.save(update_fields=["deleted_at"])
    audit.record("model.deleted", actor=actor, organization_id=organization_id, target=row)
    return row


@transaction.atomic
def register_fine_tuned_model(
    model_id: str, *, organization_id: int, base_model_id: str, job_id: str, adapter_path: str, actor: Actor
) -> FineTunedModel:
    """Register (or re-register, for a retried finish) the model a job produced; its adapter is in
    the store already."""
    row, created = FineTunedModel.all_orgs.update_or_create(
        id=model_id,
        defaults={
            "organization_id": organization_id,
            "base_model_id": base_model_id,
            "job_id": job_id,
            "adapter_path": adapter_path,
        },
    )
    if created:
        audit.record("model.registered", actor=actor, organization_id=organization_id, target=row, data={"job": job_id})
    return row
