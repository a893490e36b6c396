import re

from tenancy.models import APIKey, AuditLog, Membership, Organization
from tests.conftest import PASSWORD, key_client


def _link_in(message) -> str:
    return re.search(r"https?://\S+", message.body).group(0).removeprefix("http://testserver")


def test_sign_up_confirms_the_address_then_lands_in_the_new_organization(client, db, mailoutbox):
    page = client.get("/sign-up/")
    assert page.status_code == 200
    response = client.post(
        "/sign-up/",
        {"email": "new@example.com", "full_name": "New Person", "organization_name": "New Co", "password": PASSWORD},
    )
    assert response.status_code == 200 and "Check your inbox" in response.content.decode()
    org = Organization.objects.get(slug="new-co")
    assert Membership.all_orgs.get(organization=org).role == "owner"
    # Not signed in, and signing in is refused (a new link is sent) until the address is confirmed.
    assert client.get("/orgs/new-co/").status_code == 302
    refused = client.post("/sign-in/", {"username": "new@example.com", "password": PASSWORD})
    assert refused.status_code == 200 and "Confirm your email address" in refused.content.decode()
    assert [m.to for m in mailoutbox] == [["new@example.com"], ["new@example.com"]]
    confirmed = client.get(_link_in(mailoutbox[-1]))
    assert confirmed.status_code == 302
    overview = client.get("/orgs/new-co/").content.decode()
    assert "smollm2-135m-instruct" in overview and "/v1" in overview
    assert client.get(_link_in(mailoutbox[0])).status_code == 302  # an earlier link works as well, once confirmed


def test_sign_up_never_tells_whether_an_address_has_an_account(client, tenant_a, mailoutbox):
    """Signing up with an address that has an account answers as a new one does (no enumeration,
    no pre-registration of someone's address): its owner is mailed, nothing is made."""
    organizations = Organization.objects.count()
    taken = client.post("/sign-up/", {"email": tenant_a.owner.email, "password": PASSWORD})
    fresh = client.post("/sign-up/", {"email": "fresh@example.com", "password": PASSWORD})
    assert taken.status_code == fresh.status_code == 200
    assert "Check your inbox" in taken.content.decode() and "exists" not in taken.content.decode()
    assert Organization.objects.count() == organizations + 1  # fresh's only
    to_owner = next(m for m in mailoutbox if m.to == [tenant_a.owner.email])
    assert "has one already" in to_owner.body


def test_a_password_reset_confirms_the_address(client, db, mailoutbox):
    """Someone signed up with your address and never confirmed it: resetting the password (the
    link comes to you) makes the account yours and confirms the address."""
    from tenancy import services, shared_store, throttle
    from tenancy.audit import Actor

    for kind, value in (("reset-ip", "127.0.0.1"), ("reset-account", "mine@example.com")):
        shared_store.forget(throttle._key(kind, value))  # counters outlive a run in the shared store
    services.sign_up(email="mine@example.com", password="squatter-password-123", actor=Actor())
    client.post("/password-reset/", {"email": "mine@example.com"})
    link = _link_in(mailoutbox[-1])
    form = client.get(link, follow=True)
    done = client.post(
        form.redirect_chain[-1][0], {"new_password1": "my-own-password-456", "new_password2": "my-own-password-456"}
    )
    assert done.status_code == 302
    signed_in = client.post("/sign-in/", {"username": "mine@example.com", "password": "my-own-password-456"})
    assert signed_in.status_code == 302


def test_sign_in_page_and_redirect_for_anonymous(client, db):
    assert 'name="password"' in client.get("/sign-in/").content.decode()
    assert client.get("/orgs/alpha/keys/")["Location"].startswith("/sign-in/?next=")


def test_keys_page_shows_a_new_key_once_and_revokes(client, tenant_a, django_capture_on_commit_callbacks):
    client.force_login(tenant_a.owner)
    created = client.post("/orgs/alpha/keys/", {"name": "laptop", "scopes": ["inference", "models:read"]})
    assert created.status_code == 302 and created["Location"] == "/orgs/alpha/keys/"  # POST, redirect, GET
    shown = client.get("/orgs/alpha/keys/")
    key = re.search(r'id="new-key-value">(sk-[^<]+)<', shown.content.decode()).group(1)
    assert shown["Cache-Control"] == "no-store"
    assert key_client(key).get("/v1/models").status_code == 200
    again = client.get("/orgs/alpha/keys/").content.decode()  # a reload: the secret is gone, no second key
    assert key not in again and key[:10] in again
    assert APIKey.all_orgs.filter(name="laptop").count() == 1
    row = APIKey.all_orgs.get(name="laptop")
    with django_capture_on_commit_callbacks(execute=True):
        revoked = client.post(f"/orgs/alpha/keys/{row.pk}/revoke/")
    assert revoked.status_code == 302
    assert key_client(key).get("/v1/models").status_code == 401


def test_members_page_invites_and_changes_roles(client, tenant_a):
    client.force_login(tenant_a.owner)
    response = client.post("/orgs/alpha/members/", {"email": "new@alpha.test", "role": "viewer"})
    link = re.search(r"<code>(http://testserver/invitations/[^<]+)</code>", response.content.decode()).group(1)
    member = tenant_a.add_member("m@alpha.test")
    membership = Membership.all_orgs.get(user=member)
    client.post(f"/orgs/alpha/members/{membership.pk}/", {"role": "admin"})
    assert Membership.all_orgs.get(pk=membership.pk).role == "admin"
    owner_membership = Membership.all_orgs.get(user=tenant_a.owner)
    refused = client.post(f"/orgs/alpha/members/{owner_membership.pk}/", {"role": "viewer"}, follow=True)
    assert "at least one owner" in refused.content.decode()
    assert AuditLog.all_orgs.filter(action="member.invited", data__email="new@alpha.test").exists()

    from django.contrib.auth import get_user_model

    invitee = get_user_model().objects.create_user("new@alpha.test", PASSWORD)
    client.force_login(invitee)
    path = link.removeprefix("http://testserver")
    assert "Join" in client.get(path).content.decode()
    joined = client.post(path)
    assert joined["Location"] == "/orgs/alpha/"
    assert Membership.all_orgs.get(user=invitee).role == "viewer"


def test_viewer_cannot_manage_keys_or_members(client, tenant_a):
    viewer = tenant_a.add_member("v@alpha.test", role="viewer")
    client.force_login(viewer)
    assert client.get("/orgs/alpha/keys/").status_code == 403
    assert client.post("/orgs/alpha/members/", {"email": "x@alpha.test", "role": "owner"}).status_code == 403
    assert client.get("/orgs/alpha/members/").status_code == 200


def test_suspended_organization_page(client, tenant_a):
    from tenancy import services
    from tenancy.audit import Actor

    services.suspend_organization(tenant_a.org.pk, reason="abuse report", actor=Actor())
    client.force_login(tenant_a.owner)
    page = client.get("/orgs/alpha/")
    assert page.status_code == 403 and "abuse report" in page.content.decode()


def test_an_invitee_signed_out_creates_an_account_that_joins_without_a_new_organization(client, tenant_a):
    from tenancy import services
    from tenancy.audit import Actor

    issued = services.invite(
        organization_id=tenant_a.org.pk,
        email="joiner@alpha.test",
        role="member",
        actor_role="owner",
        actor=Actor(user=tenant_a.owner),
    )
    landing = client.get(f"/invitations/{issued.token}/").content.decode()
    create = re.search(r'href="(/sign-up/\?invitation=[^"]+)"', landing).group(1)
    form = client.get(create.replace("&amp;", "&")).content.decode()
    assert "Join" in form and 'name="organization_name"' not in form and "joiner@alpha.test" in form
    assert f"next=/invitations/{issued.token}/" in form  # "Have an account? Sign in" keeps the invitation too
    organizations = Organization.objects.count()
    joined = client.post("/sign-up/", {"email": "joiner@alpha.test", "password": PASSWORD, "invitation": issued.token})
    assert joined.status_code == 302 and joined["Location"] == "/orgs/alpha/"
    assert Organization.objects.count() == organizations
    assert Membership.all_orgs.get(user__email="joiner@alpha.test").organization == tenant_a.org


def test_password_reset_by_email(client, tenant_a, mailoutbox):
    from tenancy import shared_store, throttle

    for kind, value in (("reset-ip", "127.0.0.1"), ("reset-account", tenant_a.owner.email)):
        shared_store.forget(throttle._key(kind, value))  # counters outlive a run in the shared store
    page = client.get("/sign-in/").content.decode()
    assert 'href="/password-reset/"' in page
    sent = client.post("/password-reset/", {"email": tenant_a.owner.email})
    assert sent.status_code == 302 and sent["Location"] == "/password-reset/sent/"
    assert client.post("/password-reset/", {"email": "nobody@alpha.test"})["Location"] == "/password-reset/sent/"
    (mail,) = mailoutbox  # one message: none for an address without an account
    link = re.search(r"http://testserver(/password-reset/[^/]+/[^/]+/)", mail.body).group(1)
    form = client.get(link, follow=True)
    assert "Set a new password" in form.content.decode()
    new = "a-brand-new-long-password"
    done = client.post(form.redirect_chain[-1][0], {"new_password1": new, "new_password2": new})
    assert done["Location"] == "/password-reset/done/"
    signed_in = client.post("/sign-in/", {"username": tenant_a.owner.email, "password": new})
    assert signed_in.status_code == 302

    for _ in range(5):  # past 3 mails to one account in the window: the same answer, no more mail
        assert client.post("/password-reset/", {"email": tenant_a.owner.email})["Location"] == "/password-reset/sent/"
    assert len(mailoutbox) == 3
    for _ in range(5):  # and past 10 requests from one client: 429
        last = client.post("/password-reset/", {"email": "someone@else.test"})
    assert last.status_code == 429 and "Too many attempts" in last.content.decode()
