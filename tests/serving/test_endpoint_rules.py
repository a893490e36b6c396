"""A published endpoint's rules hold on the validated request, whichever spelling of a parameter
the caller used (no runtime needed: the rules are checked before any replica is chosen)."""

import pytest

from tests.conftest import DEMO_MODEL, key_client, session_client

pytestmark = pytest.mark.django_db(transaction=True, serialized_rollback=True)


@pytest.fixture
def capped_endpoint(tenant_a):
    owner = session_client(tenant_a.owner)
    made = owner.post(
        f"/api/orgs/{tenant_a.org.slug}/endpoints/",
        {"model": DEMO_MODEL, "name": "capped", "max_tokens_cap": 5, "defaults": {"max_tokens": 50}},
        format="json",
    )
    assert made.status_code == 201, made.content
    return made.json()["id"]


@pytest.mark.parametrize("spelling", ["max_tokens", "max_completion_tokens"])
def test_a_caller_cannot_ask_an_endpoint_for_more_than_its_cap(tenant_a, capped_endpoint, spelling):
    client = key_client(tenant_a.key(scopes=["inference"]))
    body = {"model": capped_endpoint, "messages": [{"role": "user", "content": "Hi"}], spelling: 50}
    refused = client.post("/v1/chat/completions", body, format="json")
    assert refused.status_code == 400, refused.content
    assert refused.json()["error"]["param"] == spelling
    assert "at most 5" in refused.json()["error"]["message"]
    # Within the cap, or leaving it to the endpoint's default (50, capped to 5), the request goes on
    # to the replicas (none is up here: 503).
    within = client.post("/v1/chat/completions", {**body, spelling: 5}, format="json")
    assert within.status_code == 503
    defaulted = client.post("/v1/chat/completions", {k: v for k, v in body.items() if k != spelling}, format="json")
    assert defaulted.status_code == 503
