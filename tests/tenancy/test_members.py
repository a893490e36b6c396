import threading
from datetime import timedelta

import pytest
from django.contrib.auth import get_user_model
from django.db import connection
from django.utils import timezone

from tenancy import services
from tenancy.audit import Actor
from tenancy.models import AuditLog, Invitation, Membership, Organization
from tenancy.roles import Role
from tests.conftest import PASSWORD, session_client

User = get_user_model()


def test_sign_up_creates_user_organization_and_owner_together(db):
    user, org = services.sign_up(
        email="Ada@Example.COM", password=PASSWORD, organization_name="Analytical Engines", actor=Actor(ip="10.0.0.1")
    )
    assert user.email == "ada@example.com" and user.check_password(PASSWORD)
    assert org.slug == "analytical-engines" and org.name == "Analytical Engines"
    membership = Membership.all_orgs.get(organization=org)
    assert (membership.user, membership.role) == (user, Role.OWNER)
    assert list(AuditLog.all_orgs.filter(organization=org).values_list("action", flat=True).order_by("id")) == [
        "org.created",
        "user.signed_up",
    ]


def test_failed_sign_up_leaves_nothing_behind(db):
    services.sign_up(email="a@example.com", password=PASSWORD, actor=Actor())
    counts = (User.objects.count(), Organization.objects.count(), Membership.all_orgs.count())
    with pytest.raises(services.Conflict):
        services.sign_up(email="A@example.com", password=PASSWORD, actor=Actor())
    with pytest.raises(services.ServiceError) as weak:
        services.sign_up(email="b@example.com", password="123", actor=Actor())
    assert weak.value.code == "weak_password"
    assert (User.objects.count(), Organization.objects.count(), Membership.all_orgs.count()) == counts


def test_invitation_flow_through_the_api(tenant_a):
    owner = session_client(tenant_a.owner)
    url = f"/api/orgs/{tenant_a.org.slug}/invitations/"
    created = owner.post(url, {"email": "Grace@Example.com", "role": "admin"}, format="json")
    assert created.status_code == 201
    body = created.json()
    assert body["email"] == "grace@example.com" and body["role"] == "admin" and body["status"] == "pending"
    token = body["accept_url"].rstrip("/").rsplit("/", 1)[-1]
    assert Invitation.all_orgs.get(pk=body["id"]).token_hash != token  # stored hashed
    assert "accept_url" not in owner.get(url).json()["data"][0]

    stranger = User.objects.create_user("eve@example.com", PASSWORD)
    wrong = session_client(stranger).post("/api/invitations/accept/", {"token": token}, format="json")
    assert wrong.status_code == 403 and wrong.json()["error"]["code"] == "invitation_wrong_user"

    grace = User.objects.create_user("grace@example.com", PASSWORD)
    accepted = session_client(grace).post("/api/invitations/accept/", {"token": token}, format="json")
    assert accepted.status_code == 201 and accepted.json()["role"] == "admin"
    again = session_client(grace).post("/api/invitations/accept/", {"token": token}, format="json")
    assert again.status_code == 409
    members = owner.get(f"/api/orgs/{tenant_a.org.slug}/members/").json()["data"]
    assert sorted((m["user"]["email"], m["role"]) for m in members) == [
        ("grace@example.com", "admin"),
        ("owner@alpha.test", "owner"),
    ]


def test_expired_and_revoked_invitations_cannot_be_used(tenant_a):
    joiner = User.objects.create_user("late@example.com", PASSWORD)
    issued = services.invite(
        organization_id=tenant_a.org.pk, email="late@example.com", role="member", actor_role="owner", actor=Actor()
    )
    Invitation.all_orgs.filter(pk=issued.invitation.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    with pytest.raises(services.ServiceError) as expired:
        services.accept_invitation(token=issued.token, user=joiner, actor=Actor())
    assert expired.value.code == "invitation_expired"
    second = services.invite(
        organization_id=tenant_a.org.pk, email="late@example.com", role="member", actor_role="owner", actor=Actor()
    )
    services.revoke_invitation(second.invitation.pk, organization_id=tenant_a.org.pk, actor=Actor())
    with pytest.raises(services.ServiceError) as revoked:
        services.accept_invitation(token=second.token, user=joiner, actor=Actor())
    assert revoked.value.code == "invitation_invalid"
    assert not Membership.all_orgs.filter(user=joiner).exists()


def test_admin_cannot_touch_owners_and_the_last_owner_stays(tenant_a):
    admin = tenant_a.add_member("admin@alpha.test", role="admin")
    as_admin = session_client(admin)
    owner_membership = Membership.all_orgs.get(user=tenant_a.owner)
    url = f"/api/orgs/{tenant_a.org.slug}/members/{owner_membership.pk}/"
    assert as_admin.patch(url, {"role": "member"}, format="json").status_code == 403
    assert as_admin.delete(url).status_code == 403
    member = tenant_a.add_member("m@alpha.test")
    member_url = f"/api/orgs/{tenant_a.org.slug}/members/{Membership.all_orgs.get(user=member).pk}/"
    assert as_admin.patch(member_url, {"role": "owner"}, format="json").status_code == 403
    assert as_admin.patch(member_url, {"role": "admin"}, format="json").json()["role"] == "admin"

    as_owner = session_client(tenant_a.owner)
    last = as_owner.patch(url, {"role": "admin"}, format="json")
    assert last.status_code == 409 and last.json()["error"]["code"] == "last_owner"
    assert as_owner.delete(url).status_code == 409
    assert Membership.all_orgs.get(pk=owner_membership.pk).role == Role.OWNER
    # Viewers and members cannot manage members at all.
    viewer = tenant_a.add_member("v@alpha.test", role="viewer")
    assert session_client(viewer).patch(member_url, {"role": "viewer"}, format="json").status_code == 403


def test_a_member_may_leave(tenant_a):
    member = tenant_a.add_member("m@alpha.test")
    mine = Membership.all_orgs.get(user=member)
    assert session_client(member).delete(f"/api/orgs/{tenant_a.org.slug}/members/{mine.pk}/").status_code == 204
    assert not Membership.all_orgs.filter(pk=mine.pk).exists()


@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_two_owners_demoting_each_other_at_once_leave_one_owner(make_tenant):
    if connection.vendor != "postgresql":
        pytest.skip("row locks need PostgreSQL; SQLite serialises writers anyway")
    tenant = make_tenant("race")
    second = tenant.add_member("second@race.test", role="owner")
    first_m = Membership.all_orgs.get(user=tenant.owner)
    second_m = Membership.all_orgs.get(user=second)
    barrier = threading.Barrier(2)
    outcomes = []

    def demote(target, actor_user):
        barrier.wait()
        try:
            services.change_role(
                target.pk, organization_id=tenant.org.pk, role="admin", actor_role="owner", actor=Actor(user=actor_user)
            )
            outcomes.append("ok")
        except services.Conflict:
            outcomes.append("conflict")
        finally:
            connection.close()

    threads = [
        threading.Thread(target=demote, args=(second_m, tenant.owner)),
        threading.Thread(target=demote, args=(first_m, second)),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes) == ["conflict", "ok"]
    assert Membership.all_orgs.filter(organization=tenant.org, role="owner").count() == 1
