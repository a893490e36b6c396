"""Tenancy closes every door: a key dies with its creator's right to hold it (removal, demotion,
deactivation), on every web process at once; narrow keys cannot list members; a stale
publication cannot resurrect a revoked key; sign-in and sign-up are throttled; sign-up follows
SIGN_UP_MODE; an organization owner has a cap; invitation links never reach the access log."""

import random
import re

import pytest
from django.test import Client, override_settings

from tenancy import keyauth, services
from tenancy.audit import Actor
from tenancy.models import APIKey
from tenancy.roles import Role
from tests.conftest import PASSWORD, THROTTLE_DEFAULTS, key_client, start_web


def key_of(tenant, user, scopes=None) -> str:
    return services.create_api_key(
        organization_id=tenant.org.pk, name="k", scopes=scopes, created_by_id=user.pk, actor=Actor(user=user)
    ).plaintext


def membership(tenant, user):
    from tenancy.models import Membership

    return Membership.all_orgs.get(organization=tenant.org, user=user)


@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_a_removed_admins_keys_stop_working_at_once_on_another_web_process(live_web, make_tenant):
    tenant = make_tenant("doors")
    admin = tenant.add_member("admin@doors.test", Role.ADMIN)
    admins_key = key_of(tenant, admin)
    owners_key = key_of(tenant, tenant.owner)
    other = start_web()
    try:
        headers = {"Authorization": f"Bearer {admins_key}"}
        assert other.get("/v1/models", headers=headers).status_code == 200  # cached on that process
        removed = key_client(owners_key).delete(f"/api/orgs/doors/members/{membership(tenant, admin).pk}/")
        assert removed.status_code == 204, removed.content
        refused = other.get("/v1/models", headers=headers)
        assert refused.status_code == 401 and refused.json()["error"]["code"] == "api_key_revoked"
        assert other.get("/v1/models", headers={"Authorization": f"Bearer {owners_key}"}).status_code == 200
    finally:
        other.process.terminate()
        other.process.wait(10)


def test_demotion_revokes_the_keys_the_new_role_could_not_create(tenant_a, django_capture_on_commit_callbacks):
    admin = tenant_a.add_member("admin@alpha.test", Role.ADMIN)
    wide, narrow = key_of(tenant_a, admin), key_of(tenant_a, admin, ["inference"])
    with django_capture_on_commit_callbacks(execute=True):
        services.change_role(
            membership(tenant_a, admin).pk,
            organization_id=tenant_a.org.pk,
            role=Role.MEMBER,
            actor_role=Role.OWNER,
            actor=Actor(user=tenant_a.owner),
        )
    with pytest.raises(keyauth.KeyRejected):
        keyauth.authenticate(wide)
    assert keyauth.authenticate(narrow).scopes == frozenset({"inference"})
    with django_capture_on_commit_callbacks(execute=True):
        services.change_role(
            membership(tenant_a, admin).pk,
            organization_id=tenant_a.org.pk,
            role=Role.VIEWER,
            actor_role=Role.OWNER,
            actor=Actor(user=tenant_a.owner),
        )
    with pytest.raises(keyauth.KeyRejected):
        keyauth.authenticate(narrow)


def test_a_deactivated_users_keys_stop_working(tenant_a, django_capture_on_commit_callbacks):
    member = tenant_a.add_member("member@alpha.test", Role.MEMBER)
    key = key_of(tenant_a, member, ["inference"])
    keyauth.authenticate(key)  # cached
    with django_capture_on_commit_callbacks(execute=True):
        services.deactivate_user(member.pk, actor=Actor(user=tenant_a.owner))
    with pytest.raises(keyauth.KeyRejected) as refused:
        keyauth.authenticate(key)
    assert refused.value.code == "api_key_revoked"
    assert not Client().login(email="member@alpha.test", password=PASSWORD)


def test_narrow_keys_cannot_list_members(tenant_a):
    for scopes in (["inference"], ["models:read"], ["files", "fine_tuning"]):
        response = key_client(tenant_a.key(scopes=scopes)).get("/api/orgs/alpha/members/")
        assert response.status_code in (403, 404), (scopes, response.content)
        assert b"owner@alpha.test" not in response.content
    assert key_client(tenant_a.key(scopes=["all"])).get("/api/orgs/alpha/members/").status_code == 200


def test_a_stale_publication_cannot_resurrect_a_revoked_key(tenant_a, django_capture_on_commit_callbacks):
    """Limits are edited, then the key is revoked and published; the edit's publication, which
    had not run yet, runs last: the key stays revoked."""
    issued = services.create_api_key(organization_id=tenant_a.org.pk, name="k", actor=Actor(user=tenant_a.owner))
    with django_capture_on_commit_callbacks(execute=False) as edit:
        services.set_key_limits(issued.key.pk, organization_id=tenant_a.org.pk, rpm=5, tpm=None, actor=Actor())
    with django_capture_on_commit_callbacks(execute=True):
        services.revoke_api_key(issued.key.pk, organization_id=tenant_a.org.pk, actor=Actor(user=tenant_a.owner))
    for callback in edit:
        callback()
    with pytest.raises(keyauth.KeyRejected) as refused:
        keyauth.authenticate(issued.plaintext)
    assert refused.value.code == "api_key_revoked"
    assert APIKey.all_orgs.get(pk=issued.key.pk).rpm_limit == 5


def random_ip() -> str:
    """Counters outlive a test in the shared store: each test throttles an address of its own."""
    return "10." + ".".join(str(random.randrange(1, 255)) for _ in range(3))


@override_settings(**THROTTLE_DEFAULTS)
def test_twenty_wrong_passwords_from_one_ip_are_throttled(make_tenant):
    tenant = make_tenant(f"t{random.randrange(10**9)}")
    victim = tenant.owner.email
    client = Client(REMOTE_ADDR=random_ip())
    statuses = []
    for i in range(20):
        email = victim if i % 2 else f"nobody{i}-{random.randrange(10**9)}@alpha.test"
        statuses.append(client.post("/sign-in/", {"username": email, "password": "wrong-password"}).status_code)
    assert statuses[:5] == [200] * 5  # a form with an error, not yet a block
    assert statuses[-1] == 429 and statuses.count(429) >= 10
    refused = client.post("/sign-in/", {"username": victim, "password": PASSWORD})
    assert refused.status_code == 429 and "Too many attempts" in refused.content.decode()
    assert int(refused["Retry-After"]) > 0
    # Another address is not blocked by this one's guesses, but the account is.
    elsewhere = Client(REMOTE_ADDR=random_ip())
    assert elsewhere.post("/sign-in/", {"username": victim, "password": PASSWORD}).status_code == 429
    fresh = elsewhere.post("/sign-in/", {"username": f"new{random.randrange(10**9)}@x.test", "password": "wrong-pw"})
    assert fresh.status_code == 200


@override_settings(**THROTTLE_DEFAULTS)
def test_sign_ups_are_throttled_per_ip(db):
    client = Client(REMOTE_ADDR=random_ip())
    statuses = [client.post("/sign-up/", {"email": f"u{i}@x.test", "password": "short"}).status_code for i in range(7)]
    assert statuses[:5] == [200] * 5 and statuses[5:] == [429, 429]


@pytest.mark.parametrize("mode", ["closed", "invite-only"])
def test_sign_up_modes(mode, tenant_a):
    with override_settings(SIGN_UP_MODE=mode):
        with pytest.raises(services.Forbidden):
            services.sign_up(email="new@x.test", password=PASSWORD, actor=Actor())
        page = Client().get("/sign-up/").content.decode()
        assert ("closed" if mode == "closed" else "by invitation") in page
        issued = services.invite(
            organization_id=tenant_a.org.pk,
            email="new@x.test",
            role=Role.MEMBER,
            actor_role=Role.OWNER,
            actor=Actor(user=tenant_a.owner),
        )
        if mode == "closed":
            with pytest.raises(services.Forbidden):
                services.sign_up(email="new@x.test", password=PASSWORD, invitation_token=issued.token, actor=Actor())
            return
        with pytest.raises(services.Forbidden):  # the invitation is for someone else
            services.sign_up(email="other@x.test", password=PASSWORD, invitation_token=issued.token, actor=Actor())
        user, org = services.sign_up(
            email="new@x.test", password=PASSWORD, invitation_token=issued.token, actor=Actor()
        )
        assert org == tenant_a.org and membership(tenant_a, user).role == Role.MEMBER


@override_settings(MAX_ORGANIZATIONS_PER_USER=2)
def test_an_owner_may_own_a_limited_number_of_organizations(tenant_a):
    services.create_organization(slug="second", name="Second", owner=tenant_a.owner, actor=Actor())
    with pytest.raises(services.Forbidden) as refused:
        services.create_organization(slug="third", name="Third", owner=tenant_a.owner, actor=Actor())
    assert refused.value.code == "organization_limit"


@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_invitation_links_never_reach_the_access_log(make_tenant):
    tenant = make_tenant("logs")
    issued = services.invite(
        organization_id=tenant.org.pk,
        email="x@logs.test",
        role=Role.MEMBER,
        actor_role=Role.OWNER,
        actor=Actor(user=tenant.owner),
    )
    web = start_web(access_log=True)
    try:
        assert web.get(f"/invitations/{issued.token}/").status_code == 200
        assert web.get(f"/sign-up/?invitation={issued.token}").status_code == 200
    finally:
        web.process.terminate()
        web.process.wait(10)
    log = web.log()
    assert re.search(r"GET /invitations/\[REDACTED\]", log), log[-2000:]
    assert issued.token not in log


@override_settings(**THROTTLE_DEFAULTS)
def test_the_account_throttle_counts_an_address_however_it_is_spelled(make_tenant):
    tenant = make_tenant(f"t{random.randrange(10**9)}")
    victim = tenant.owner.email
    spellings = [victim, f" {victim}", f"{victim.upper()} ", f"\t{victim}", victim]
    for spelling in spellings:  # five failures, each from its own address
        Client(REMOTE_ADDR=random_ip()).post("/sign-in/", {"username": spelling, "password": "wrong-password"})
    refused = Client(REMOTE_ADDR=random_ip()).post("/sign-in/", {"username": f"  {victim}", "password": PASSWORD})
    assert refused.status_code == 429


@pytest.mark.django_db(transaction=True, serialized_rollback=True)
@override_settings(**THROTTLE_DEFAULTS)
def test_concurrent_guesses_are_counted_before_any_is_checked(make_tenant):
    """Twenty wrong passwords at once against one account: at most its limit (5) are checked."""
    from concurrent.futures import ThreadPoolExecutor

    tenant = make_tenant(f"t{random.randrange(10**9)}")

    from django.db import connection

    def guess(n: int) -> int:
        try:
            return (
                Client(REMOTE_ADDR=random_ip())
                .post("/sign-in/", {"username": tenant.owner.email, "password": f"wrong-{n}"})
                .status_code
            )
        finally:
            connection.close()  # this thread's connection goes back to the pool

    with ThreadPoolExecutor(6) as pool:  # fewer threads than the process's pool has connections
        statuses = list(pool.map(guess, range(20)))
    assert statuses.count(200) <= 5 and statuses.count(429) >= 15


@override_settings(**THROTTLE_DEFAULTS)
def test_the_back_office_sign_in_is_throttled_too(make_tenant, settings):
    from django.contrib.auth import get_user_model

    operator = get_user_model().objects.create_superuser(f"op{random.randrange(10**9)}@platform.test", PASSWORD)
    url = f"/{settings.ADMIN_URL}login/"
    statuses = [
        Client(REMOTE_ADDR=random_ip()).post(url, {"username": operator.email, "password": "wrong"}).status_code
        for _ in range(6)
    ]
    assert statuses[:5] == [200] * 5 and statuses[5] == 429
    refused = Client(REMOTE_ADDR=random_ip()).post(url, {"username": operator.email, "password": PASSWORD})
    assert refused.status_code == 429 and int(refused["Retry-After"]) > 0


def test_password_reset_links_are_scrubbed_from_logs():
    from maas.logging import redact

    line = '127.0.0.1:5000 - "GET /password-reset/MQ/cn8x2k-5f3a9b0c1d2e3f4a5b6c7d8e9f0a1b2c/ HTTP/1.1" 200'
    assert redact(line) == '127.0.0.1:5000 - "GET /password-reset/[REDACTED]/ HTTP/1.1" 200'
    assert redact("GET /password-reset/sent/ HTTP/1.1") == "GET /password-reset/sent/ HTTP/1.1"


def test_pool_metrics_need_the_token_in_production(client, settings, db):
    settings.METRICS_TOKEN = ""
    assert client.get("/metrics/pool").status_code == 200  # loopback, embedded default
    settings.PRODUCTION = True
    refused = client.get("/metrics/pool")
    assert refused.status_code == 403 and "METRICS_TOKEN" in refused.content.decode()
    settings.METRICS_TOKEN = "t" * 40
    assert client.get("/metrics/pool", HTTP_AUTHORIZATION="Bearer " + "t" * 40).status_code == 200
