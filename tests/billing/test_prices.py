"""The price book: exact money, effective-dated versions, organization prices, inheritance."""

from datetime import timedelta
from decimal import Decimal

import pytest
from django.utils import timezone

from billing import money, pricing, services
from billing.models import Price, UsageEvent
from catalog.models import FineTunedModel
from tenancy.audit import Actor
from tenancy.models import AuditLog
from tests.conftest import DEMO_MODEL

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def fresh_price_cache():
    pricing.forget()
    yield
    pricing.forget()


def test_money_is_exact_nano_units():
    assert money.from_decimal("0.000000001") == 1
    assert money.from_decimal(Decimal("12.5")) == 12_500_000_000
    assert money.to_decimal(1) == Decimal("1E-9")
    assert money.per_token_from_per_million("0.10") == 100
    assert money.per_million(100) == "0.1"
    assert money.per_million(10_000) == "10"  # never "1E+1"
    assert [money.exact(n) for n in (0, 10**10, 50_000_000, 1_000_000_001)] == ["0", "10", "0.05", "1.000000001"]
    with pytest.raises(money.MoneyError):
        money.from_decimal("0.0000000001")  # below a nano-unit: refused, never rounded
    with pytest.raises(money.MoneyError):
        money.per_token_from_per_million("0.0005")  # not a whole nano-unit per token
    with pytest.raises(money.MoneyError):
        money.from_decimal("NaN")
    assert money.to_minor_units(money.from_decimal("1.005")) == 100  # half to even, only when paid
    assert money.to_minor_units(money.from_decimal("1.015")) == 102


def test_the_demo_model_has_a_list_price():
    price = pricing.current(None, DEMO_MODEL)
    assert (price.input, price.output, price.training) == (100, 200, 1000)
    assert price.cost(prompt_tokens=30, completion_tokens=7) == 30 * 100 + 7 * 200


def set_price(model=DEMO_MODEL, organization=None, prices=("1", "2", "3"), **kwargs):
    return services.set_price(
        model=model,
        organization_id=organization.pk if organization else None,
        input_per_million=prices[0],
        output_per_million=prices[1],
        training_per_million=prices[2],
        actor=Actor(),
        **kwargs,
    )


def test_a_new_price_never_reprices_the_past(tenant_a):
    before = pricing.current(tenant_a.org.pk, DEMO_MODEL)
    soon = timezone.now() + timedelta(hours=1)
    later = set_price(effective_from=soon)
    pricing.forget()
    assert pricing.current(tenant_a.org.pk, DEMO_MODEL) == before  # not yet
    assert pricing.current(tenant_a.org.pk, DEMO_MODEL, at=soon).version == later.pk
    with pytest.raises(services.BillingError):
        set_price(effective_from=timezone.now() - timedelta(days=1))
    assert Price.objects.filter(model=DEMO_MODEL).count() == 2  # the old version stays
    audit = AuditLog.all_orgs.get(action="billing.price_set")
    assert audit.data["input_per_million"] == "1" and audit.data["effective_from"] == soon.isoformat()


def test_an_organization_price_applies_to_that_organization_only(tenant_a, tenant_b):
    own = set_price(organization=tenant_a.org, prices=("0.05", "0.05", "0.5"))
    pricing.forget()
    assert pricing.current(tenant_a.org.pk, DEMO_MODEL).version == own.pk
    assert pricing.current(tenant_b.org.pk, DEMO_MODEL).version != own.pk
    assert pricing.current(tenant_b.org.pk, DEMO_MODEL).input == 100


def test_a_fine_tuned_model_inherits_its_base_price_until_it_has_its_own(tenant_a, tenant_b):
    tuned = FineTunedModel.all_orgs.create(
        id=f"ft:{DEMO_MODEL}:alpha:x:abc123", organization=tenant_a.org, base_model_id=DEMO_MODEL, adapter_path="/x"
    )
    assert pricing.current(tenant_a.org.pk, tuned.pk, DEMO_MODEL).input == 100
    with pytest.raises(services.BillingError):  # another organization's model cannot be priced for b
        set_price(model=tuned.pk, organization=tenant_b.org)
    with pytest.raises(services.BillingError):
        set_price(model="no-such-model")
    own = set_price(model=tuned.pk, organization=tenant_a.org, prices=("4", "5", "6"))
    pricing.forget()
    assert pricing.current(tenant_a.org.pk, tuned.pk, DEMO_MODEL).version == own.pk


def test_ledger_rows_carry_their_cost_and_price_version(tenant_a):
    price = pricing.current(tenant_a.org.pk, DEMO_MODEL)
    record = {
        "request_id": "req_priced",
        "organization_id": tenant_a.org.pk,
        "route": "chat.completions",
        "model": DEMO_MODEL,
        "base_model": DEMO_MODEL,
        "prompt_tokens": 1234,
        "completion_tokens": 567,
        "price": [price.version, price.input, price.output, price.training],
        "status_code": 200,
        "outcome": "ok",
        "latency_ms": 5,
    }
    assert services.record_usage(**record) is True
    set_price(prices=("9", "9", "9"))  # a later price changes nothing already charged
    assert services.record_usage(**record) is False
    row = UsageEvent.all_orgs.get(request_id="req_priced")
    assert row.cost == 1234 * 100 + 567 * 200 and row.price_id == price.version


# The gateway reads prices on a worker thread with its own connection: the rows must be committed.
@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_models_show_each_organization_its_own_price(tenant_a, tenant_b):
    from tests.conftest import key_client

    set_price(organization=tenant_a.org, prices=("0.05", "0.07", "0.5"))
    pricing.forget()
    seen = {}
    for tenant in (tenant_a, tenant_b):
        models = key_client(tenant.key()).get("/v1/models").json()["data"]
        seen[tenant.org.slug] = next(m["pricing"] for m in models if m["id"] == DEMO_MODEL)
    assert seen["alpha"]["input_per_million"] == "0.05" and seen["alpha"]["output_per_million"] == "0.07"
    assert seen["beta"]["input_per_million"] == "0.1"  # b sees the list price, not a's


def test_the_back_office_adds_price_versions_and_refuses_bad_ones(client, django_user_model):
    from django.urls import reverse

    client.force_login(django_user_model.objects.create_superuser("root@example.com", "a-long-admin-password"))
    url = reverse("admin:billing_price_add")
    later = timezone.now() + timedelta(hours=1)
    form = {
        "model": DEMO_MODEL,
        "effective_from_0": later.strftime("%Y-%m-%d"),
        "effective_from_1": later.strftime("%H:%M:%S"),
        "input_per_million": "0.30",
        "output_per_million": "0.60",
        "training_per_million": "2",
        "replica_minute": "0.0015",
        "batch_output_per_million": "0.25",  # batch input left empty: half the input price
        "input_cached_per_million": "0.03",
        "note": "",
    }
    for bad in ({"model": "no-such-model"}, {"input_per_million": "0.0001"}, {"effective_from_0": "2020-01-01"}):
        page = client.post(url, {**form, **bad})
        assert page.status_code == 200 and b"errorlist" in page.content, bad  # the form again, with the reason
    assert client.post(url, form).status_code == 302
    added = Price.objects.filter(model=DEMO_MODEL).order_by("-id").first()
    assert (added.input_per_token, added.output_per_token, added.training_per_token) == (300, 600, 2000)
    assert added.replica_minute == 1_500_000
    assert added.batch_amounts == (150, 250) and added.batch_input_per_token is None
    assert added.cached_amount == 30
    assert AuditLog.all_orgs.filter(action="billing.price_set", target_id=str(added.pk)).exists()
    change = client.get(reverse("admin:billing_price_change", args=[added.pk]))
    assert change.status_code == 200 and b'name="_save"' not in change.content  # versions are never edited


def test_the_price_list_shows_each_organization_its_own_prices(tenant_a, tenant_b):
    from tests.conftest import session_client

    tuned = FineTunedModel.all_orgs.create(
        id=f"ft:{DEMO_MODEL}:alpha:x:def456", organization=tenant_a.org, base_model_id=DEMO_MODEL, adapter_path="/x"
    )
    set_price(organization=tenant_a.org, prices=("0.05", "0.07", "0.5"))
    pricing.forget()
    lists = {}
    for tenant in (tenant_a, tenant_b):
        response = session_client(tenant.owner).get(f"/api/orgs/{tenant.org.slug}/billing/prices/")
        assert response.status_code == 200
        lists[tenant.org.slug] = {row["model"]: row for row in response.json()["data"]}
    assert lists["alpha"][DEMO_MODEL]["input_per_million"] == "0.05"
    assert lists["alpha"][tuned.pk]["input_per_million"] == "0.05"  # inherits a's own base price
    assert lists["alpha"][tuned.pk]["base_model"] == DEMO_MODEL
    assert lists["beta"][DEMO_MODEL]["input_per_million"] == "0.1" and tuned.pk not in lists["beta"]
    outsider = session_client(tenant_b.owner)
    assert outsider.get(f"/api/orgs/{tenant_a.org.slug}/billing/prices/").status_code == 404
