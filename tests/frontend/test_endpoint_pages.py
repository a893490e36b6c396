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
