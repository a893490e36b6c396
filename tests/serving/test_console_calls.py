"""The console's playground calls the gateway with the member's session, not a key: a signed-in
member with the page's CSRF token is served as their console key (limited and metered as a key);
without the token, signed out, in another organization or as a viewer, the call is refused."""

from __future__ import annotations

import re

import httpx
import pytest

from billing import money
from billing.models import UsageEvent
from tenancy.models import APIKey
from tests.conftest import DEMO_MODEL, PASSWORD, usage_row
from tests.serving.stub_upstream import Upstream
from tests.serving.test_gateway_upstreams import register

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True, serialized_rollback=True)]
BODY = {"model": DEMO_MODEL, "messages": [{"role": "user", "content": "Say hi."}]}


def signed_in(web, email: str) -> tuple[httpx.Client, str]:
    browser = httpx.Client(base_url=web.url, timeout=30)
    page = browser.get("/sign-in/")
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text).group(1)
    done = browser.post("/sign-in/", data={"username": email, "password": PASSWORD, "csrfmiddlewaretoken": token})
    assert done.status_code == 302, done.text
    return browser, browser.cookies["csrftoken"]


def test_a_signed_in_member_calls_as_their_console_key(live_web, make_tenant, tenant_b):
    register("console-upstream", Upstream("provider", words=3, delay=0))
    tenant = make_tenant("consoled")
    browser, csrf = signed_in(live_web, tenant.owner.email)
    headers = {"X-Console-Organization": tenant.org.slug, "X-CSRFToken": csrf}

    answer = browser.post("/v1/chat/completions", json=BODY, headers=headers)
    assert answer.status_code == 200, answer.text
    key = APIKey.all_orgs.get(organization=tenant.org, console_user=tenant.owner)
    assert key.scopes == ["inference", "models:read"] and key.revoked_at is None
    row = usage_row(answer.headers["x-request-id"])
    assert row.api_key_id == key.pk and row.organization_id == tenant.org.pk
    assert browser.post("/v1/chat/completions", json=BODY, headers=headers).status_code == 200
    assert APIKey.all_orgs.filter(console_user=tenant.owner).count() == 1  # one key per member, reused

    no_token = browser.post("/v1/chat/completions", json=BODY, headers={"X-Console-Organization": tenant.org.slug})
    assert no_token.status_code == 403 and no_token.json()["error"]["code"] == "csrf_failed"
    elsewhere = browser.post(
        "/v1/chat/completions", json=BODY, headers={**headers, "X-Console-Organization": tenant_b.org.slug}
    )
    assert elsewhere.status_code == 403 and elsewhere.json()["error"]["code"] == "not_a_member"
    signed_out = httpx.post(live_web.url + "/v1/chat/completions", json=BODY, headers=headers)
    assert signed_out.status_code == 401

    viewer = tenant.add_member("viewer@consoled.test", role="viewer")
    as_viewer, viewer_csrf = signed_in(live_web, viewer.email)
    refused = as_viewer.post(
        "/v1/chat/completions",
        json=BODY,
        headers={"X-Console-Organization": tenant.org.slug, "X-CSRFToken": viewer_csrf},
    )
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "insufficient_role"
    assert UsageEvent.all_orgs.filter(organization=tenant.org).count() == 2

    # The page reads the reply's usage and cost back from the ledger, for the member's own calls only.
    usage = browser.get(f"/orgs/{tenant.org.slug}/playground/usage/{answer.headers['x-request-id']}/")
    assert usage.status_code == 200 and usage.json()["completion_tokens"] == row.completion_tokens
    assert usage.json()["cost"] == money.exact(row.cost) and row.cost > 0
    usage_path = f"/orgs/{tenant.org.slug}/playground/usage/{answer.headers['x-request-id']}/"
    other_member, _ = signed_in(live_web, tenant.add_member("m2@consoled.test", role="member").email)
    assert other_member.get(usage_path).status_code == 202  # not theirs: as if it had not landed
