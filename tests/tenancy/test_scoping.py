import pytest
from celery import shared_task

from tenancy import scope
from tenancy.models import APIKey, Membership
from tenancy.scoped_tasks import organization_task


def test_default_manager_fails_closed_outside_a_scope(tenant_a):
    tenant_a.key()
    with pytest.raises(scope.TenantScopeMissing):
        APIKey.objects.count()
    with pytest.raises(scope.TenantScopeMissing):
        list(Membership.objects.all())


def test_scope_shows_one_organization_and_all_orgs_shows_every(tenant_a, tenant_b):
    tenant_a.key()
    tenant_a.key()
    tenant_b.key()
    with scope.organization(tenant_a.org.pk):
        assert APIKey.objects.count() == 2
        assert set(APIKey.objects.values_list("organization_id", flat=True)) == {tenant_a.org.pk}
        with scope.organization(tenant_b.org.pk):
            assert APIKey.objects.count() == 1
        assert APIKey.objects.count() == 2  # the outer scope is restored
    assert APIKey.all_orgs.count() == 3
    with scope.all_organizations():
        assert APIKey.objects.count() == 3
    with pytest.raises(scope.TenantScopeMissing):
        APIKey.objects.count()


def test_object_of_another_organization_is_not_found_in_scope(tenant_a, tenant_b):
    tenant_b.key()
    other = APIKey.all_orgs.get(organization=tenant_b.org)
    with scope.organization(tenant_a.org.pk), pytest.raises(APIKey.DoesNotExist):
        APIKey.objects.get(pk=other.pk)


@organization_task
def count_keys(organization_id: int) -> int:
    return APIKey.objects.count()


def test_organization_task_runs_inside_the_scope(tenant_a, tenant_b):
    tenant_a.key()
    tenant_b.key()
    tenant_b.key()
    assert count_keys.apply(args=[tenant_a.org.pk]).get() == 1
    assert count_keys.apply(kwargs={"organization_id": tenant_b.org.pk}).get() == 2
    with pytest.raises(scope.TenantScopeMissing):
        count_keys.apply(args=["not-an-id"]).get()
    with pytest.raises(scope.TenantScopeMissing):  # nothing leaked out of the task's scope
        APIKey.objects.count()


def test_plain_shared_task_without_decorator_fails_closed(tenant_a):
    @shared_task
    def unscoped():
        return APIKey.objects.count()

    with pytest.raises(scope.TenantScopeMissing):
        unscoped.apply().get()


def test_an_organizations_service_runs_in_its_scope_and_refuses_another(tenant_a, tenant_b):
    """tenancy.scope.scoped: inside, the default manager sees the organization's rows only; a call
    for one organization from inside another's scope is a bug, refused."""
    from tenancy import scope as tenancy_scope
    from tenancy.models import APIKey
    from tenancy.scope import TenantScopeMissing

    tenant_a.key()
    tenant_b.key()

    @tenancy_scope.scoped
    def names(*, organization_id):
        return sorted(APIKey.objects.values_list("organization_id", flat=True))

    assert names(organization_id=tenant_a.org.pk) == [tenant_a.org.pk]
    with tenancy_scope.organization(tenant_b.org.pk), pytest.raises(TenantScopeMissing):
        names(organization_id=tenant_a.org.pk)
    with tenancy_scope.all_organizations():  # the back office narrows to the one it acts on
        assert names(organization_id=tenant_b.org.pk) == [tenant_b.org.pk]
