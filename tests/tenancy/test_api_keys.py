import hashlib
import logging
from datetime import timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from tenancy import keyauth, services
from tenancy.audit import Actor
from tenancy.models import APIKey
from tests.conftest import key_client, session_client


def create_via_api(tenant, **body):
    client = session_client(tenant.owner)
    response = client.post(f"/api/orgs/{tenant.org.slug}/keys/", {"name": "ci", **body}, format="json")
    return client, response


def test_key_is_shown_once_and_stored_as_sha256(tenant_a):
    client, response = create_via_api(tenant_a, scopes=["inference", "models:read"])
    assert response.status_code == 201, response.content
    body = response.json()
    key = body["key"]
    assert key.startswith("sk-") and len(key) >= 3 + 43  # 32 random bytes, base64url
    assert body["prefix"] == key[:10] and body["scopes"] == ["inference", "models:read"]
    assert response["Cache-Control"] == "no-store"
    row = APIKey.all_orgs.get(pk=body["id"])
    assert row.key_hash == hashlib.sha256(key.encode()).hexdigest()
    listed = client.get(f"/api/orgs/{tenant_a.org.slug}/keys/").json()
    assert [k["id"] for k in listed["data"]] == [body["id"]]
    assert "key" not in listed["data"][0] and key not in str(listed)
    detail = client.get(f"/api/orgs/{tenant_a.org.slug}/keys/{body['id']}/").json()
    assert "key" not in detail and detail["status"] == "active"


def test_revoked_key_stops_working_at_once(tenant_a, django_capture_on_commit_callbacks):
    client, response = create_via_api(tenant_a)
    key, key_id = response.json()["key"], response.json()["id"]
    api = key_client(key)
    assert api.get("/v1/models").status_code == 200  # now cached
    with django_capture_on_commit_callbacks(execute=True):
        revoked = client.delete(f"/api/orgs/{tenant_a.org.slug}/keys/{key_id}/")
    assert revoked.status_code == 200 and revoked.json()["status"] == "revoked"
    refused = api.get("/v1/models")
    assert refused.status_code == 401
    assert refused.json()["error"]["code"] == "api_key_revoked"


@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_revocation_reaches_another_process_at_once(live_web, make_tenant):
    tenant = make_tenant("gamma")
    issued = services.create_api_key(organization_id=tenant.org.pk, name="k", actor=Actor(user=tenant.owner))
    headers = {"Authorization": f"Bearer {issued.plaintext}"}
    assert live_web.get("/v1/models", headers=headers).status_code == 200
    assert live_web.get("/v1/models", headers=headers).status_code == 200  # served from the shared cache
    services.revoke_api_key(issued.key.pk, organization_id=tenant.org.pk, actor=Actor(user=tenant.owner))
    response = live_web.get("/v1/models", headers=headers)
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "api_key_revoked"


def test_stale_reader_cannot_resurrect_a_revoked_key(tenant_a, django_capture_on_commit_callbacks):
    """A reader that loaded the key before the revocation fills the cache with `add` only,
    so it cannot overwrite the revocation that was published meanwhile."""
    issued = services.create_api_key(organization_id=tenant_a.org.pk, name="k", actor=Actor())
    stale = keyauth.KeyPrincipal.from_row(issued.key, tenant_a.org)
    with django_capture_on_commit_callbacks(execute=True):
        services.revoke_api_key(issued.key.pk, organization_id=tenant_a.org.pk, actor=Actor())
    from django.core.cache import cache

    cache.add(keyauth._cache_key(issued.key.key_hash), stale.to_cache(), 300)
    with pytest.raises(keyauth.KeyRejected) as rejected:
        keyauth.authenticate(issued.plaintext)
    assert rejected.value.code == "api_key_revoked"


def test_expired_key_is_refused(tenant_a):
    issued = services.create_api_key(
        organization_id=tenant_a.org.pk, name="k", actor=Actor(), expires_at=timezone.now() + timedelta(days=1)
    )
    APIKey.all_orgs.filter(pk=issued.key.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    response = key_client(issued.plaintext).get("/v1/models")
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "api_key_expired"


def test_last_used_is_recorded_without_a_write_per_request(tenant_a):
    issued = services.create_api_key(organization_id=tenant_a.org.pk, name="k", actor=Actor())
    assert APIKey.all_orgs.get(pk=issued.key.pk).last_used_at is None
    keyauth.authenticate(issued.plaintext)
    first = APIKey.all_orgs.get(pk=issued.key.pk).last_used_at
    assert first is not None
    with CaptureQueriesContext(connection) as queries:
        for _ in range(5):
            keyauth.authenticate(issued.plaintext)
    assert len(queries) == 0  # cached principal, last use already recorded in this window
    assert APIKey.all_orgs.get(pk=issued.key.pk).last_used_at == first


def test_scopes_limit_what_a_key_may_call(tenant_a):
    files_only = tenant_a.key(scopes=["files"])
    response = key_client(files_only).get("/v1/models")
    assert response.status_code == 403
    assert response.json()["error"] == {
        "message": "This API key lacks the scope for this call; it needs one of: models:read, inference.",
        "type": "permission_error",
        "param": None,
        "code": "insufficient_scope",
    }
    assert key_client(tenant_a.key(scopes=["models:read"])).get("/v1/models").status_code == 200
    # A key without `all` cannot manage keys.
    listing = key_client(tenant_a.key(scopes=["inference"])).get(f"/api/orgs/{tenant_a.org.slug}/keys/")
    assert listing.status_code == 403


def test_unknown_scope_is_rejected_and_nothing_is_created(tenant_a):
    before = APIKey.all_orgs.count()
    _, response = create_via_api(tenant_a, scopes=["root"])
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "scopes"
    assert APIKey.all_orgs.count() == before


def test_member_keys_are_their_own_and_never_all_scoped(tenant_a):
    member = tenant_a.add_member("m@alpha.test")
    tenant_a.key()  # the owner's
    client = session_client(member)
    url = f"/api/orgs/{tenant_a.org.slug}/keys/"
    denied = client.post(url, {"name": "mine", "scopes": ["all"]}, format="json")
    assert denied.status_code == 403 and denied.json()["error"]["code"] == "scope_not_allowed"
    created = client.post(url, {"name": "mine", "scopes": ["inference"]}, format="json")
    assert created.status_code == 201
    assert [k["name"] for k in client.get(url).json()["data"]] == ["mine"]
    owner_key = APIKey.all_orgs.filter(organization=tenant_a.org).exclude(name="mine").get()
    assert client.delete(f"{url}{owner_key.pk}/").status_code == 404
    viewer = tenant_a.add_member("v@alpha.test", role="viewer")
    assert session_client(viewer).post(url, {"name": "x", "scopes": ["inference"]}, format="json").status_code == 403


def test_no_key_material_in_database_or_logs(tenant_a, caplog, django_capture_on_commit_callbacks):
    caplog.set_level(logging.DEBUG)
    _, response = create_via_api(tenant_a)
    key = response.json()["key"]
    key_client(key).get("/v1/models")
    key_client(key + "x").get("/v1/models")  # a wrong key is not logged either
    key_client(key).get(f"/api/orgs/{tenant_a.org.slug}/nope/")
    with django_capture_on_commit_callbacks(execute=True):
        services.revoke_api_key(response.json()["id"], organization_id=tenant_a.org.pk, actor=Actor())
    assert key_client(key).get("/v1/models").status_code == 401
    logged = "\n".join(r.getMessage() + (r.exc_text or "") for r in caplog.records)
    assert caplog.records and key not in logged and key[3:] not in logged
    dump = _every_text_value_in_the_database()
    assert key not in dump and key[3:] not in dump
    assert hashlib.sha256(key.encode()).hexdigest() in dump  # the dump did read the keys table


def _every_text_value_in_the_database() -> str:
    chunks = []
    with connection.cursor() as cursor:
        for table in connection.introspection.table_names():
            cursor.execute(f'SELECT * FROM "{table}"')  # noqa: S608 (table names from introspection)
            chunks += [str(row) for row in cursor.fetchall()]
    return "\n".join(chunks)


def test_redaction_filter_scrubs_key_material():
    from maas.logging import RedactSecretsFilter

    record = logging.LogRecord(
        "x", logging.INFO, __file__, 1, "auth %s header=%s", ("sk-" + "a" * 43, "Bearer abc.def"), None
    )
    RedactSecretsFilter().filter(record)
    assert record.getMessage() == "auth [REDACTED] header=Bearer [REDACTED]"


def test_members_may_read_endpoints_with_a_key_but_never_manage_them(tenant_a):
    from serving.models import Endpoint
    from tests.conftest import DEMO_MODEL

    member = tenant_a.add_member("m@alpha.test")
    client = session_client(member)
    url = f"/api/orgs/{tenant_a.org.slug}/keys/"
    for scopes in (["endpoints"], ["endpoints:write"], ["inference", "endpoints:write"]):
        denied = client.post(url, {"name": "ep", "scopes": scopes}, format="json")
        assert denied.status_code == 403 and denied.json()["error"]["code"] == "scope_not_allowed", scopes
    reader = client.post(url, {"name": "ep", "scopes": ["endpoints:read"]}, format="json")
    assert reader.status_code == 201
    endpoints_url = f"/api/orgs/{tenant_a.org.slug}/endpoints/"
    as_reader = key_client(reader.json()["key"])
    assert as_reader.get(endpoints_url).status_code == 200
    refused = as_reader.post(endpoints_url, {"model": DEMO_MODEL, "name": "bot"}, format="json")
    assert refused.status_code == 403
    assert not Endpoint.all_orgs.filter(organization=tenant_a.org).exists()
    # The owner's own key with `endpoints:write` publishes.
    writer = key_client(tenant_a.key(scopes=["endpoints:write"]))
    made = writer.post(endpoints_url, {"model": DEMO_MODEL, "name": "bot"}, format="json")
    assert made.status_code == 201, made.content
    endpoint_id = made.json()["id"]
    assert as_reader.post(f"{endpoints_url}{endpoint_id}/stop/").status_code == 403
    assert as_reader.delete(f"{endpoints_url}{endpoint_id}/").status_code == 403
    assert as_reader.patch(f"{endpoints_url}{endpoint_id}/", {"system_prompt": "x"}, format="json").status_code == 403
    assert Endpoint.all_orgs.get(pk=endpoint_id).status != "stopped"


def test_a_key_minted_before_the_split_does_no_more_than_its_creator_may_grant(tenant_a):
    """A member's key with the old `endpoints` scope (as minted before members lost it) is narrowed
    to `endpoints:read` by the migration, and until then cannot manage endpoints anyway: a key acts
    with no more than its creator's role allows."""
    import importlib

    from django.db.migrations.loader import MigrationLoader

    from tests.conftest import DEMO_MODEL

    member = tenant_a.add_member("m@alpha.test")
    admin = tenant_a.add_member("a@alpha.test", role="admin")
    minted = {
        who: services.create_api_key(
            organization_id=tenant_a.org.pk,
            name=f"old {who.email}",
            scopes=["inference", "endpoints"],
            created_by_id=who.pk,
            actor=Actor(user=who),
        )
        for who in (member, admin)
    }
    endpoints_url = f"/api/orgs/{tenant_a.org.slug}/endpoints/"
    as_member = key_client(minted[member].plaintext)
    assert as_member.post(endpoints_url, {"model": DEMO_MODEL, "name": "bot"}, format="json").status_code == 403
    assert as_member.get(endpoints_url).status_code == 200

    migration = importlib.import_module("tenancy.migrations.0004_split_endpoints_scope")
    state = MigrationLoader(None).project_state(("tenancy", "0004_split_endpoints_scope"))
    migration.narrow(state.apps, None)
    assert APIKey.all_orgs.get(pk=minted[member].key.pk).scopes == ["inference", "endpoints:read"]
    assert APIKey.all_orgs.get(pk=minted[admin].key.pk).scopes == ["inference", "endpoints"]
    made = key_client(minted[admin].plaintext).post(endpoints_url, {"model": DEMO_MODEL, "name": "b"}, format="json")
    assert made.status_code == 201


def test_every_scope_a_member_may_grant_gives_only_what_a_member_may_do():
    from tenancy.roles import MATRIX, MEMBER_GRANTABLE_SCOPES, Role, permissions_of_scopes

    for scope in MEMBER_GRANTABLE_SCOPES:
        assert permissions_of_scopes([scope]) <= MATRIX[Role.MEMBER], scope


def test_a_console_key_cannot_be_revoked_to_shed_its_limits(tenant_a):
    """Revoked, a member's console key would be made again at their next playground call without
    the limits set on it: it lives as long as the membership."""
    member = tenant_a.add_member("m@alpha.test")
    console = services.console_key(organization_id=tenant_a.org.pk, user_id=member.pk)
    services.set_key_limits(console.pk, organization_id=tenant_a.org.pk, rpm=5, tpm=500, actor=Actor())
    url = f"/api/orgs/{tenant_a.org.slug}/keys/{console.pk}/"
    for who in (member, tenant_a.owner):
        refused = session_client(who).delete(url)
        assert refused.status_code == 409 and refused.json()["error"]["code"] == "console_key"
    again = services.console_key(organization_id=tenant_a.org.pk, user_id=member.pk)
    assert again.pk == console.pk and (again.rpm_limit, again.tpm_limit) == (5, 500)


@pytest.mark.parametrize("name", ["line\nbreak", "tab\there", "nul\x00byte", "bidi\u202eflip", "line\u2028sep"])
def test_names_are_one_line_of_printable_text(tenant_a, name):
    from tests.conftest import DEMO_MODEL

    owner = session_client(tenant_a.owner)
    base = f"/api/orgs/{tenant_a.org.slug}"
    for path, body in (
        ("keys/", {"name": name}),
        ("endpoints/", {"model": DEMO_MODEL, "name": name}),
        ("datasets/", {"name": name}),
    ):
        refused = owner.post(f"{base}/{path}", body, format="json")
        assert refused.status_code == 400, (path, refused.content)
        assert refused.json()["error"]["param"] == "name"
    assert owner.patch(f"{base}/", {"name": name}, format="json").status_code == 400
    assert APIKey.all_orgs.filter(organization=tenant_a.org).count() == 0
