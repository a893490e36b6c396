"""Another organization's key cannot see or use anything org-private."""

import httpx
import pytest

from catalog.models import BaseModel
from tests.conftest import DEMO_MODEL, DEMO_SOURCE

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True, serialized_rollback=True)]


def test_restricted_model_serves_its_organization_only(live_web, runtime_server, make_tenant):
    a, b = make_tenant("owner-org"), make_tenant("other-org")
    private = BaseModel.objects.create(
        id="alpha-tuned-base",
        display_name="Private",
        family="llama",
        context_length=8192,
        source=DEMO_SOURCE,
        visibility=BaseModel.Visibility.RESTRICTED,
    )
    private.allowed_organizations.add(a.org)
    runtime_server.register(name="private-replica", base_model=private.pk, served_model_name=DEMO_MODEL)
    body = {"model": private.pk, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}

    def call(tenant, path="/v1/chat/completions", method="post"):
        headers = {"Authorization": f"Bearer {tenant.key()}"}
        return httpx.request(
            method, live_web.url + path, json=body if method == "post" else None, headers=headers, timeout=60
        )

    assert call(a).status_code == 200
    assert call(a).json()["model"] == private.pk
    refused = call(b)
    assert refused.status_code == 404 and refused.json()["error"]["code"] == "model_not_found"
    assert private.pk not in [m["id"] for m in call(b, "/v1/models", "get").json()["data"]]
    assert call(b, f"/v1/models/{private.pk}", "get").status_code == 404
