"""The console's models and endpoints pages, through Django's test client: what they list, the
publishing form's errors next to their fields, roles, other organizations, and the styled 404."""

from serving.models import Endpoint
from tests.conftest import DEMO_MODEL


def test_models_page_lists_base_and_fine_tuned_models_with_prices(client, tenant_a):
    from catalog.models import FineTunedModel

    FineTunedModel.all_orgs.create(
        id=f"ft:{DEMO_MODEL}:alpha:tone:abc", organization=tenant_a.org, base_model_id=DEMO_MODEL, adapter_path="x"
    )
    client.force_login(tenant_a.owner)
    page = client.get("/orgs/alpha/models/").content.decode()
    assert DEMO_MODEL in page and f"ft:{DEMO_MODEL}:alpha:tone:abc" in page
    assert "0.1" in page and "0.002" in page  # the demo prices: input per million, replica-minute


def test_publishing_form_names_the_bad_field_and_lands_on_the_endpoint(client, tenant_a, settings):
    settings.CELERY_TASK_ALWAYS_EAGER = False  # no replica here: the endpoint stays deploying
    client.force_login(tenant_a.owner)
    empty = client.get("/orgs/alpha/endpoints/").content.decode()
    assert "No endpoints yet" in empty and "Publish one below" in empty
    bad = client.post(
        "/orgs/alpha/endpoints/", {"name": "bot", "model": DEMO_MODEL, "billing_mode": "per_token", "replicas": 40}
    )
    assert bad.status_code == 200 and 'id="id_replicas-error"' in bad.content.decode()
    made = client.post(
        "/orgs/alpha/endpoints/",
        {"name": "bot", "model": DEMO_MODEL, "billing_mode": "per_token", "replicas": 1, "max_tokens": 30},
    )
    endpoint = Endpoint.all_orgs.get(organization=tenant_a.org, name="bot")
    assert made.status_code == 302 and made["Location"] == f"/orgs/alpha/endpoints/{endpoint.pk}/"
    assert endpoint.defaults == {"max_tokens": 30}
    detail = client.get(made["Location"]).content.decode()
    assert endpoint.pk in detail and 'hx-trigger="every 2s"' in detail  # polls while it deploys
    partial = client.get(made["Location"], headers={"HX-Request": "true"}).content.decode()
    assert partial.lstrip().startswith('<section id="endpoint-status"')
    duplicate = client.post(
        "/orgs/alpha/endpoints/", {"name": "bot", "model": DEMO_MODEL, "billing_mode": "per_token", "replicas": 1}
    )
    assert "exists already" in duplicate.content.decode()
    stopped = client.post(f"/orgs/alpha/endpoints/{endpoint.pk}/stop/")
    assert stopped.status_code == 302
    endpoint.refresh_from_db()
    assert endpoint.status == "stopped"


def test_viewers_see_endpoints_but_cannot_change_them_and_other_orgs_get_404(client, tenant_a, tenant_b):
    endpoint = Endpoint.all_orgs.create(
        id="ep-00000000000000bb", organization=tenant_a.org, name="seen", model=DEMO_MODEL, base_model_id=DEMO_MODEL
    )
    viewer = tenant_a.add_member("v@alpha.test", role="viewer")
    client.force_login(viewer)
    page = client.get(f"/orgs/alpha/endpoints/{endpoint.pk}/").content.decode()
    assert "seen" in page and "/stop/" not in page
    assert client.post(f"/orgs/alpha/endpoints/{endpoint.pk}/stop/").status_code == 403
    assert client.post("/orgs/alpha/endpoints/", {"name": "x", "model": DEMO_MODEL}).status_code == 403
    client.force_login(tenant_b.owner)
    assert client.get(f"/orgs/alpha/endpoints/{endpoint.pk}/").status_code == 404
    assert client.get(f"/orgs/beta/endpoints/{endpoint.pk}/").status_code == 404


def test_unknown_pages_get_the_styled_404_and_the_favicon_exists(client, tenant_a, settings):
    settings.DEBUG = False
    client.force_login(tenant_a.owner)
    missing = client.get("/no/such/page/")
    assert missing.status_code == 404 and 'data-testid="error-page"' in missing.content.decode()
    assert client.get("/favicon.ico")["Location"].endswith("frontend/favicon.svg")


def test_the_dashboard_shows_today_and_what_is_running(client, tenant_a):
    from billing import pricing
    from billing import services as billing
    from billing.ledger import price_fields
    from tests.billing.usage import usage_record

    price = pricing.current(tenant_a.org.pk, DEMO_MODEL)
    for n in range(3):  # 3 requests of 10 + 5 tokens at the demo price
        billing.record_usage(**usage_record(tenant_a.org.pk, f"dash-{n}", model=DEMO_MODEL, price=price_fields(price)))
    client.force_login(tenant_a.owner)
    page = client.get("/orgs/alpha/").content.decode()
    today = page[page.index('data-testid="today"') :]
    assert ">3<" in today and ">45<" in today  # requests and tokens
    assert "0.000006 USD" in today  # 3 x (10 x 0.1 + 5 x 0.2) per million
    assert "No job is running" in page and "Publish a model" in page


def test_the_audit_log_is_for_owners_and_admins_and_filters(client, tenant_a, tenant_b):
    from tenancy import services
    from tenancy.audit import Actor

    services.create_api_key(organization_id=tenant_a.org.pk, name="audited", actor=Actor(user=tenant_a.owner))
    client.force_login(tenant_a.owner)
    page = client.get("/orgs/alpha/audit/?action=key.").content.decode()
    assert "key.created" in page and "audited" in page and "org.created" not in page
    assert "org.created" in client.get("/orgs/alpha/audit/").content.decode()
    member = tenant_a.add_member("m@alpha.test", role="member")
    client.force_login(member)
    assert client.get("/orgs/alpha/audit/").status_code == 403
    client.force_login(tenant_b.owner)
    assert client.get("/orgs/alpha/audit/").status_code == 404


def test_the_usage_page_shows_calls_and_their_cost_by_model_and_key(client, tenant_a, tenant_b):
    from billing import pricing
    from billing import services as billing
    from billing.ledger import price_fields
    from tenancy import services
    from tenancy.audit import Actor
    from tests.billing.usage import usage_record

    key = services.create_api_key(organization_id=tenant_a.org.pk, name="backend", actor=Actor()).key
    price = price_fields(pricing.current(tenant_a.org.pk, DEMO_MODEL))
    for n in range(2):  # 2 x (10 x 0.1 + 5 x 0.2) per million = 0.000004
        billing.record_usage(
            **usage_record(tenant_a.org.pk, f"u-{n}", model=DEMO_MODEL, price=price, api_key_id=str(key.pk))
        )
    billing.record_usage(**usage_record(tenant_b.org.pk, "other", model=DEMO_MODEL, price=price))
    client.force_login(tenant_a.owner)
    page = client.get("/orgs/alpha/usage/").content.decode()
    by_model = page[page.index('data-testid="usage-by-model"') :]
    assert f"<code>{DEMO_MODEL}</code></td><td>2</td><td>30</td><td>0.000004 USD" in by_model
    assert "<td>backend</td><td>2</td>" in page
    assert page.count("u-0") == 0 and "recent-calls" in page  # request ids are not shown; the calls are
    assert page[page.index('data-testid="recent-calls"') :].count("<tr>") == 3  # header + 2: not beta's
    member = tenant_a.add_member("m@alpha.test", role="member")
    client.force_login(member)
    assert client.get("/orgs/alpha/usage/").status_code == 403


def test_owners_set_a_limit_save_a_card_and_top_up_from_the_billing_page(client, tenant_a):
    from billing.budgets import ensure_account

    before = ensure_account(tenant_a.org.pk).credit
    client.force_login(tenant_a.owner)
    page = client.get("/orgs/alpha/billing/").content.decode()
    assert "Charge the card" in page and "none saved" in page
    client.post("/orgs/alpha/billing/", {"action": "limit", "monthly_limit": "12.50"})
    assert ensure_account(tenant_a.org.pk).monthly_limit == 12_500_000_000
    declined = client.post("/orgs/alpha/billing/", {"action": "card", "payment_method": "pm_nonsense"}, follow=True)
    assert "Unknown test card" in declined.content.decode()
    client.post("/orgs/alpha/billing/", {"action": "card", "payment_method": "pm_card_visa"})
    topped = client.post("/orgs/alpha/billing/", {"action": "top_up", "amount": "20.00"}, follow=True)
    assert "Credit added." in topped.content.decode() and "visa ending 4242" in topped.content.decode()
    assert ensure_account(tenant_a.org.pk).credit == before + 20_000_000_000
    admin = tenant_a.add_member("a@alpha.test", role="admin")
    client.force_login(admin)
    assert "Charge the card" not in client.get("/orgs/alpha/billing/").content.decode()
    assert client.post("/orgs/alpha/billing/", {"action": "top_up", "amount": "5"}).status_code == 403


def test_owners_limit_a_keys_monthly_spend_from_the_keys_page(client, tenant_a):
    from billing.models import KeySpendLimit
    from tenancy import services
    from tenancy.audit import Actor

    key = services.create_api_key(organization_id=tenant_a.org.pk, name="batch", actor=Actor()).key
    client.force_login(tenant_a.owner)
    client.post(f"/orgs/alpha/keys/{key.pk}/limit/", {"monthly_limit": "3.25"})
    assert KeySpendLimit.all_orgs.get(api_key=key).monthly_limit == 3_250_000_000
    assert 'value="3.25"' in client.get("/orgs/alpha/keys/").content.decode()
    client.post(f"/orgs/alpha/keys/{key.pk}/limit/", {"monthly_limit": ""})
    assert not KeySpendLimit.all_orgs.filter(api_key=key).exists()
    admin = tenant_a.add_member("a@alpha.test", role="admin")
    client.force_login(admin)
    assert "Set limit" not in client.get("/orgs/alpha/keys/").content.decode()
    assert client.post(f"/orgs/alpha/keys/{key.pk}/limit/", {"monthly_limit": "1"}).status_code == 403


def test_a_server_error_gets_the_styled_500_page(client, tenant_a, settings, monkeypatch):
    from tenancy import selectors

    def broken(user):
        raise RuntimeError("the database fell over")

    settings.DEBUG = False
    monkeypatch.setattr(selectors, "memberships_of_user", broken)
    client.raise_request_exception = False
    client.force_login(tenant_a.owner)
    page = client.get("/")
    assert page.status_code == 500 and 'data-testid="error-page"' in page.content.decode()
    assert "fell over" not in page.content.decode()  # nothing of the error reaches the page
