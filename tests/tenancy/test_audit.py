from tenancy import services
from tenancy.audit import Actor
from tenancy.models import AuditLog
from tests.conftest import PASSWORD, session_client


def actions(**filters):
    return list(AuditLog.all_orgs.filter(**filters).order_by("id").values_list("action", flat=True))


def test_console_sign_in_and_failures_are_audited(client, tenant_a):
    bad = client.post(
        "/sign-in/", {"username": tenant_a.owner.email, "password": "wrong password"}, REMOTE_ADDR="192.0.2.7"
    )
    assert bad.status_code == 200
    failed = AuditLog.all_orgs.get(action="auth.sign_in_failed")
    assert failed.data == {"email": tenant_a.owner.email} and failed.ip == "192.0.2.7"
    assert "wrong password" not in str(failed.data)
    ok = client.post("/sign-in/", {"username": tenant_a.owner.email, "password": PASSWORD}, REMOTE_ADDR="192.0.2.8")
    assert ok.status_code == 302
    signed_in = AuditLog.all_orgs.get(action="auth.signed_in")
    assert signed_in.actor == tenant_a.owner and signed_in.ip == "192.0.2.8"


def test_security_actions_are_audited_with_actor_and_target(tenant_a, django_capture_on_commit_callbacks):
    owner = session_client(tenant_a.owner)
    slug = tenant_a.org.slug
    key = owner.post(f"/api/orgs/{slug}/keys/", {"name": "ci"}, format="json").json()
    owner.delete(f"/api/orgs/{slug}/keys/{key['id']}/")
    member = tenant_a.add_member("m@alpha.test")
    membership = [
        m for m in owner.get(f"/api/orgs/{slug}/members/").json()["data"] if m["user"]["email"] == member.email
    ]
    owner.patch(f"/api/orgs/{slug}/members/{membership[0]['id']}/", {"role": "viewer"}, format="json")
    owner.delete(f"/api/orgs/{slug}/members/{membership[0]['id']}/")
    with django_capture_on_commit_callbacks(execute=True):
        services.suspend_organization(tenant_a.org.pk, reason="unpaid", actor=Actor())
    assert actions(organization=tenant_a.org) == [
        "org.created",
        "user.signed_up",
        "key.created",
        "key.revoked",
        "member.invited",
        "member.joined",
        "member.role_changed",
        "member.removed",
        "org.suspended",
    ]
    created = AuditLog.all_orgs.get(action="key.created")
    assert created.actor == tenant_a.owner and created.target_id == key["id"]
    assert created.data == {"name": "ci", "prefix": key["prefix"], "scopes": ["all"]}
    changed = AuditLog.all_orgs.get(action="member.role_changed")
    assert changed.data == {"user": "m@alpha.test", "from": "member", "to": "viewer"}


def test_audit_log_is_visible_to_admins_only(tenant_a):
    viewer = tenant_a.add_member("v@alpha.test", role="viewer")
    url = f"/api/orgs/{tenant_a.org.slug}/audit-log/"
    assert session_client(viewer).get(url).status_code == 403
    page = session_client(tenant_a.owner).get(url + "?limit=2").json()
    assert page["object"] == "list" and page["has_more"] is True and len(page["data"]) == 2
    rest = session_client(tenant_a.owner).get(url + f"?limit=50&after={page['last_id']}").json()
    seen = [r["id"] for r in page["data"] + rest["data"]]
    assert len(seen) == len(set(seen)) == AuditLog.all_orgs.filter(organization=tenant_a.org).count()
