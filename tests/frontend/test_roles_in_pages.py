"""Roles hold in the console as in the API: a viewer's session posts to every console URL of its
organization (each with a real object of it in the path) and changes nothing; another
organization's member gets 404 for every one of them."""

from django.urls import URLPattern, URLResolver, get_resolver

from billing.models import Invoice
from fine_tuning.models import File, FineTuningJob
from serving.models import Endpoint
from tenancy.models import APIKey, AuditLog, Membership
from tests.conftest import DEMO_MODEL


def console_patterns():
    def walk(patterns, prefix=""):
        for entry in patterns:
            if isinstance(entry, URLResolver):
                yield from walk(entry.url_patterns, prefix + str(entry.pattern))
            elif isinstance(entry, URLPattern):
                yield prefix + str(entry.pattern), entry.name

    for route, name in walk(get_resolver().url_patterns):
        if route.startswith("orgs/<slug:org>/"):
            yield route, name


def seeded(tenant):
    """One object of each kind a console URL can name, in the tenant's organization."""
    org = tenant.org
    file = File.all_orgs.create(
        organization=org, purpose="fine-tune", filename="d.jsonl", bytes=1, sha256="0", storage_key=f"k-{org.pk}"
    )
    job = FineTuningJob.all_orgs.create(
        organization=org, base_model_id=DEMO_MODEL, training_file=file, seed=1, status="running"
    )
    endpoint = Endpoint.all_orgs.create(
        id=f"ep-{org.pk:016x}", organization=org, name="e", model=DEMO_MODEL, base_model_id=DEMO_MODEL
    )
    invoice = Invoice.all_orgs.create(
        organization=org, number=f"INV-{org.pk}", period="2026-01-01", subtotal=0, credits_applied=0, amount_due=0
    )
    key = APIKey.all_orgs.create(organization=org, name="k", prefix="sk-x", key_hash=f"{org.pk:064x}")
    member = Membership.all_orgs.get(organization=org, user=tenant.owner)
    return {
        "org": org.slug,
        "endpoint_id": endpoint.pk,
        "file_id": file.pk,
        "job_id": job.pk,
        "invoice_id": str(invoice.pk),
        "key_id": str(key.pk),
        "member_id": str(member.pk),
        "request_id": "req_0",
    }


def fill(route: str, values: dict, verb: str) -> str:
    path = "/" + route
    for name, value in {**values, "verb": verb}.items():
        for kind in ("slug", "str", "int", "uuid"):
            path = path.replace(f"<{kind}:{name}>", value)
    assert "<" not in path, path
    return path


def test_a_viewer_changes_nothing_and_another_organization_sees_nothing(client, tenant_a, tenant_b):
    values = seeded(tenant_a)
    viewer = tenant_a.add_member("viewer@alpha.test", role="viewer")
    routes = list(console_patterns())
    assert {"keys", "endpoint_action", "job_action", "data", "fine_tuning", "billing"} <= {n for _, n in routes}

    client.force_login(viewer)
    audit_before = AuditLog.all_orgs.count()
    counts = [m.all_orgs.count() for m in (APIKey, Endpoint, File, FineTuningJob, Membership)]
    for route, _ in routes:
        for verb in ("stop", "start", "delete", "cancel", "pause", "resume", "revoke"):
            path = fill(route, values, verb)
            answer = client.post(path, {"action": "top_up", "amount": "5", "name": "x", "model": DEMO_MODEL})
            assert answer.status_code in (200, 403, 404, 405), (path, answer.status_code)
    assert AuditLog.all_orgs.count() == audit_before  # every change writes an audit row: none was made
    assert [m.all_orgs.count() for m in (APIKey, Endpoint, File, FineTuningJob, Membership)] == counts
    assert FineTuningJob.all_orgs.get(pk=values["job_id"]).status == "running"

    client.force_login(tenant_b.owner)
    for route, _ in routes:
        path = fill(route, values, "stop")
        assert client.get(path).status_code == 404, path
        assert client.post(path, {}).status_code == 404, path
