"""Which base models an organization may see and use."""

from __future__ import annotations

from django.db.models import Q, QuerySet

from catalog.models import BaseModel


def visible_base_models(organization_id: int) -> QuerySet[BaseModel]:
    return (
        BaseModel.objects.exclude(status=BaseModel.Status.DISABLED)
        .filter(Q(visibility=BaseModel.Visibility.PUBLIC) | Q(allowed_organizations__id=organization_id))
        .distinct()
        .order_by("id")
    )


def fine_tuned_models(organization_id: int) -> QuerySet:
    from catalog.models import FineTunedModel

    return (
        FineTunedModel.all_orgs.filter(organization_id=organization_id, deleted_at=None)
        .exclude(base_model__status=BaseModel.Status.DISABLED)
        .order_by("-created_at")
    )


def deleted_fine_tuned_models() -> QuerySet:
    """Every organization's deleted fine-tuned models (the retention sweep reclaims their adapters)."""
    from catalog.models import FineTunedModel

    return FineTunedModel.all_orgs.exclude(deleted_at=None)
