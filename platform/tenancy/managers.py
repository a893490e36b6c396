"""Managers for tenant-owned models: `objects` is scoped and fails closed; `all_orgs` is the
explicitly named cross-tenant path."""

from __future__ import annotations

from django.db import models

from tenancy import scope


class TenantManager(models.Manager):
    def get_queryset(self) -> models.QuerySet:
        current = scope.current()
        queryset = super().get_queryset()
        if current is scope.ALL_ORGANIZATIONS:
            return queryset
        return queryset.filter(organization_id=current)


class TenantModel(models.Model):
    """Base for every row that belongs to an organization (child rows too).

    `objects` is declared first, so it is the model's default manager: Django's generic code
    (get_object_or_404, DRF generics, related managers) inherits the fail-closed behaviour.
    """

    organization = models.ForeignKey("tenancy.Organization", on_delete=models.CASCADE, related_name="+", db_index=True)

    objects = TenantManager()
    all_orgs = models.Manager()  # noqa: DJ012 (ruff takes a manager for a field)

    class Meta:
        abstract = True
