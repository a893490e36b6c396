"""The platform's errors (tenancy.errors) reach a caller as their answer on both API stacks,
never as a 500: a refusal raised by a service below a gateway view included."""

import pytest

from tenancy import services
from tenancy.audit import Actor
from tests.conftest import DEMO_MODEL

BODY = {"model": DEMO_MODEL, "messages": [{"role": "user", "content": "Hi"}]}


def test_a_console_call_for_a_suspended_organization_is_refused_not_a_500(client, tenant_a):
    """The member has no console key yet; making one is refused (the organization is suspended),
    and that refusal is the answer."""
    services.suspend_organization(tenant_a.org.pk, reason="unpaid invoice", actor=Actor())
    client.force_login(tenant_a.owner)
    response = client.post(
        "/v1/chat/completions", BODY, content_type="application/json", HTTP_X_CONSOLE_ORGANIZATION=tenant_a.org.slug
    )
    assert response.status_code == 403, response.content
    error = response.json()["error"]
    assert error["code"] == "organization_suspended"
    assert error["type"] == "permission_error"


def test_errors_carry_their_headers_on_both_stacks(client, tenant_a):
    from tenancy.errors import TooManyRequests, render

    body, status, headers = render(TooManyRequests("Slow down.", retry_after=7))
    assert (status, headers) == (429, {"Retry-After": "7"})
    error = {"message": "Slow down.", "type": "rate_limit_error", "param": None, "code": "rate_limited"}
    assert body == {"error": error}


@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_numbers_past_what_the_database_holds_are_a_400_not_a_500(tenant_a):
    from tenancy.models import APIKey
    from tests.conftest import key_client, session_client

    owner = session_client(tenant_a.owner)
    owner.raise_request_exception = False
    key = key_client(tenant_a.key())
    base = f"/api/orgs/{tenant_a.org.slug}"
    key_id = APIKey.all_orgs.filter(organization=tenant_a.org).first().pk
    answers = {
        "key limit": owner.put(f"{base}/billing/key-limits/{key_id}/", {"monthly_limit": "99999999999"}, format="json"),
        "account limit": owner.patch(f"{base}/billing/account/", {"monthly_limit": "9999999999"}, format="json"),
        "usage": key.get("/v1/organization/usage/completions?start_time=300000000000"),
        "costs": owner.get(f"{base}/billing/costs/?start_time=0&end_time=300000000000"),
        **{
            field: owner.post(f"{base}/endpoints/", {"model": DEMO_MODEL, "name": field, field: 2**40}, format="json")
            for field in ("rpm_limit", "tpm_limit", "max_tokens_cap")
        },
    }
    assert {name: response.status_code for name, response in answers.items()} == {name: 400 for name in answers}
    assert owner.get(f"/orgs/{tenant_a.org.slug}/audit/?page=99999999999999999999").status_code == 200


@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_two_endpoints_created_at_once_with_one_name_give_one_and_a_409(tenant_a):
    from concurrent.futures import ThreadPoolExecutor

    from django.db import connection

    from serving import endpoints
    from serving.models import Endpoint

    if connection.vendor != "postgresql":
        pytest.skip("concurrent transactions need PostgreSQL")

    def create(_):
        try:
            endpoints.create(
                organization_id=tenant_a.org.pk, model=DEMO_MODEL, settings={"name": "twin"}, actor=Actor()
            )
            return 201
        except endpoints.EndpointError as error:
            return error.status
        finally:
            connection.close()

    with ThreadPoolExecutor(4) as pool:
        statuses = sorted(pool.map(create, range(4)))
    assert statuses == [201, 409, 409, 409]
    assert Endpoint.all_orgs.filter(organization=tenant_a.org, name="twin").count() == 1


def test_a_failing_replica_tells_the_tenant_why_without_its_internals(tenant_a):
    """Placing an endpoint on a replica that cannot be reached: the tenant reads that it cannot be
    reached, not the address or the client library's exception."""
    from serving import endpoints
    from serving import services as serving_services
    from serving.models import EndpointReplica

    backend = serving_services.register_backend(name="far", url="http://127.0.0.1:9", base_model=DEMO_MODEL)
    endpoint = endpoints.create(
        organization_id=tenant_a.org.pk, model=DEMO_MODEL, settings={"name": "e"}, actor=Actor()
    )
    outcome = endpoints.place(endpoint, backend)
    assert not outcome.ok and "Connection refused" in outcome.error  # the operator's log has it
    placement = EndpointReplica.all_orgs.get(endpoint=endpoint, backend=backend)
    assert placement.last_error == "the replica cannot be reached"


def test_a_crashed_validation_tells_the_tenant_no_internals(tenant_a, settings):
    """The validator itself fails (here: the reference tokenizer's source is a path that does not
    exist): the file ends in error with a reason that names neither the path nor the exception."""
    import json

    from django.core.files.uploadedfile import SimpleUploadedFile

    from catalog.models import BaseModel
    from fine_tuning import services as files
    from fine_tuning.models import File

    BaseModel.objects.filter(pk=DEMO_MODEL).update(source={"format": "gguf", "path": "/srv/secret/weights.gguf"})
    files._tokenizer.cache_clear()
    line = json.dumps({"messages": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}]})
    uploaded = SimpleUploadedFile("t.jsonl", (line + "\n").encode())
    uploaded.sha256 = "0" * 64
    row = files.upload_file(organization_id=tenant_a.org.pk, uploaded=uploaded, purpose="fine-tune", actor=Actor())
    from tenancy import scope

    try:
        with scope.organization(tenant_a.org.pk):
            files.validate_file(row.pk)
    finally:
        files._tokenizer.cache_clear()
    row = File.all_orgs.get(pk=row.pk)
    assert row.status == "error"
    assert "/srv/secret" not in row.status_details and "Error" not in row.status_details
    assert row.pk in row.status_details


def test_without_redis_the_gateway_answers_503_not_500(tenant_a, settings, monkeypatch):
    """Redis away (restarting): a call needs it for its key and its rate limits, so it is refused
    with 503 and Retry-After — neither served without them nor a 500."""
    from tenancy import shared_store
    from tests.conftest import key_client

    key = tenant_a.key()
    settings.REDIS_URL = "redis://127.0.0.1:9/0"  # nothing listens there
    monkeypatch.setattr(shared_store, "_sync_client", None)
    monkeypatch.setattr(shared_store, "_async_clients", {})
    refused = key_client(key).post("/v1/chat/completions", BODY, format="json")
    assert refused.status_code == 503, refused.content
    assert refused.json()["error"]["code"] == "store_unavailable" and refused["Retry-After"] == "2"
    listing = key_client(key).get("/v1/models")
    assert listing.status_code == 503
