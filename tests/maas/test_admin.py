"""The back office: every registered model's pages render in the all-organizations scope,
key hashes are never shown, and the suspend/revoke actions go through the services."""

import pytest
from django.contrib import admin
from django.urls import reverse

from tenancy.models import APIKey, Organization
from tests.conftest import key_client


@pytest.fixture
def staff(client, django_user_model):
    user = django_user_model.objects.create_superuser("root@example.com", "a-long-admin-password")
    client.force_login(user)
    return client


def test_every_admin_page_renders(staff, tenant_a):
    from billing import budgets

    tenant_a.key()
    tenant_a.add_member("m@alpha.test")
    budgets.ensure_account(tenant_a.org.pk)
    for model in admin.site._registry:
        opts = model._meta
        changelist = staff.get(reverse(f"admin:{opts.app_label}_{opts.model_name}_changelist"))
        assert changelist.status_code == 200, opts.label
        obj = model._base_manager.first()
        if obj is not None:
            change = staff.get(reverse(f"admin:{opts.app_label}_{opts.model_name}_change", args=[obj.pk]))
            assert change.status_code == 200, opts.label


def test_key_pages_never_show_the_hash(staff, tenant_a):
    tenant_a.key()
    key = APIKey.all_orgs.get()
    page = staff.get(reverse("admin:tenancy_apikey_change", args=[key.pk])).content.decode()
    listing = staff.get(reverse("admin:tenancy_apikey_changelist")).content.decode()
    assert key.prefix in listing and key.key_hash not in page and key.key_hash not in listing
    assert staff.get(reverse("admin:tenancy_apikey_add")).status_code == 403


def test_suspend_and_reactivate_actions(staff, tenant_a, django_capture_on_commit_callbacks):
    api = key_client(tenant_a.key())
    assert api.get("/v1/models").status_code == 200
    url = reverse("admin:tenancy_organization_changelist")
    with django_capture_on_commit_callbacks(execute=True):
        staff.post(url, {"action": "suspend", "_selected_action": [tenant_a.org.pk]})
    assert Organization.objects.get(pk=tenant_a.org.pk).status == "suspended"
    refused = api.get("/v1/models")
    assert refused.status_code == 403 and "is suspended" in refused.json()["error"]["message"]
    with django_capture_on_commit_callbacks(execute=True):
        staff.post(url, {"action": "reactivate", "_selected_action": [tenant_a.org.pk]})
    assert api.get("/v1/models").status_code == 200


def test_revoke_action(staff, tenant_a, django_capture_on_commit_callbacks):
    api = key_client(tenant_a.key())
    assert api.get("/v1/models").status_code == 200
    key = APIKey.all_orgs.get()
    with django_capture_on_commit_callbacks(execute=True):
        staff.post(reverse("admin:tenancy_apikey_changelist"), {"action": "revoke", "_selected_action": [key.pk]})
    assert api.get("/v1/models").status_code == 401


def test_admin_needs_staff(client, tenant_a):
    client.force_login(tenant_a.owner)
    assert client.get(reverse("admin:tenancy_organization_changelist")).status_code == 302


def test_rate_limit_edits_reach_the_gateway_at_once(staff, tenant_a, django_capture_on_commit_callbacks):
    from tenancy import keyauth

    plaintext = tenant_a.key()
    key = APIKey.all_orgs.get()
    assert keyauth.authenticate(plaintext).key_rpm is None  # cached now
    with django_capture_on_commit_callbacks(execute=True):
        response = staff.post(
            reverse("admin:tenancy_apikey_change", args=[key.pk]), {"rpm_limit": "7", "tpm_limit": ""}
        )
    assert response.status_code == 302
    assert keyauth.authenticate(plaintext).key_rpm == 7
    org_url = reverse("admin:tenancy_organization_change", args=[tenant_a.org.pk])
    with django_capture_on_commit_callbacks(execute=True):
        response = staff.post(
            org_url,
            {
                "name": "Alpha Renamed",
                "rpm_limit": "",
                "tpm_limit": "5000",
                "memberships-TOTAL_FORMS": "0",
                "memberships-INITIAL_FORMS": "0",
            },
        )
    assert response.status_code == 302, response.content[:2000]
    principal = keyauth.authenticate(plaintext)
    assert principal.org_tpm == 5000
    assert Organization.objects.get(pk=tenant_a.org.pk).name == "Alpha Renamed"


def test_job_cancel_and_requeue_actions(staff, tenant_a, django_capture_on_commit_callbacks):
    from fine_tuning import jobs
    from fine_tuning import services as fine_tuning
    from fine_tuning.models import FineTuningJob
    from tenancy import scope
    from tenancy.audit import Actor
    from tests.fine_tuning.test_jobs import fact_upload

    upload = fact_upload()
    upload.sha256 = "0" * 64
    with scope.organization(tenant_a.org.pk), django_capture_on_commit_callbacks(execute=False):
        file = fine_tuning.upload_file(
            organization_id=tenant_a.org.pk, uploaded=upload, purpose="fine-tune", actor=Actor()
        )
        fine_tuning.validate_file(file.pk)
        job = jobs.create(
            organization_id=tenant_a.org.pk, model="smollm2-135m-instruct", training_file=file.pk, actor=Actor()
        )
    url = reverse("admin:fine_tuning_finetuningjob_changelist")
    with django_capture_on_commit_callbacks(execute=False) as dispatched:
        staff.post(url, {"action": "requeue", "_selected_action": [job.pk]}, follow=True)
    assert FineTuningJob.all_orgs.get(pk=job.pk).status == "validating_files" and not dispatched
    FineTuningJob.all_orgs.filter(pk=job.pk).update(status="failed", error={"code": "x", "message": "y"})
    with django_capture_on_commit_callbacks(execute=False) as dispatched:
        staff.post(url, {"action": "requeue", "_selected_action": [job.pk]})
    requeued = FineTuningJob.all_orgs.get(pk=job.pk)
    assert requeued.status == "queued" and requeued.error is None and len(dispatched) == 1
    assert staff.get(url).status_code == 200
    staff.post(url, {"action": "cancel", "_selected_action": [job.pk]})
    assert FineTuningJob.all_orgs.get(pk=job.pk).status == "cancelled"


def test_a_backends_shared_secret_is_never_rendered_and_kept_when_left_empty(staff, tenant_a):
    from serving import services
    from serving.models import Backend
    from tests.conftest import DEMO_MODEL

    backend = services.register_backend(
        name="secretive", url="http://10.0.0.5:8100", base_model=DEMO_MODEL, api_key="s3cret-runtime-key-0123456789"
    )
    url = reverse("admin:serving_backend_change", args=[backend.pk])
    assert "s3cret-runtime-key-0123456789" not in staff.get(url).content.decode()
    form = {
        "name": "secretive",
        "url": "http://10.0.0.6:8100",
        "engine": backend.engine,
        "base_model": DEMO_MODEL,
        "served_model_name": "",
        "api_key": "",
        "enabled": "on",
    }
    assert staff.post(url, form).status_code == 302
    backend = Backend.objects.get(pk=backend.pk)
    assert (backend.url, backend.api_key) == ("http://10.0.0.6:8100", "s3cret-runtime-key-0123456789")
    assert staff.post(url, {**form, "clear_api_key": "on"}).status_code == 302
    assert Backend.objects.get(pk=backend.pk).api_key == ""
