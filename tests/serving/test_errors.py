"""The platform's errors (tenancy.errors) reach a caller as their answer on both API stacks,
never as a 500: a refusal raised by a service below a gateway view included."""

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
