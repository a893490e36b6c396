"""The usage and cost APIs against the ledger: whatever the window, bucket width and grouping, and
whether rows are rolled up, not yet rolled up, or arrived late into an hour already rolled up, the
APIs' totals equal the sums of the ledger rows."""

from __future__ import annotations

import random
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from billing import money, rollups, services
from billing.models import Price, UsageEvent, UsageRollup
from tenancy.models import APIKey
from tenancy.roles import Scope
from tests.billing.usage import usage_record
from tests.conftest import key_client, session_client

NOW = int(datetime.now(UTC).timestamp())
DAY, HOUR = 86400, 3600


def _price(
    model: str, amounts: tuple[int, int, int], days_ago: int, batch: tuple[int, int] | None = None, cached=None
) -> dict:
    """A version, and what a record carries of it: synchronous, or a batch request's (its own batch
    amounts, else half; a cached prompt token at the lower of its batch and cached amounts)."""
    row = Price.objects.create(
        model=model,
        input_per_token=amounts[0],
        output_per_token=amounts[1],
        training_per_token=amounts[2],
        batch_input_per_token=batch and batch[0],
        batch_output_per_token=batch and batch[1],
        input_cached_per_token=cached,
        effective_from=datetime.now(UTC) - timedelta(days=days_ago),
    )
    batch_input, batch_output = row.batch_amounts
    return {
        "sync": [row.pk, *amounts, 0, row.cached_amount],
        "batch": [row.pk, batch_input, batch_output, amounts[2], 0, min(batch_input, row.cached_amount)],
    }


ROUTES = ["chat.completions", "completions", "embeddings", "batch.chat.completions", "batch.embeddings"]


def _write(tenant, rng: random.Random, count: int, keys: list[str], prices: dict, *, tag: str, oldest: int) -> None:
    for n in range(count):
        model = rng.choice(["m-small", "m-large"])
        training = rng.random() < 0.1
        route = "fine_tuning.jobs" if training else rng.choice(ROUTES)
        prompt = 0 if training else rng.randint(1, 500)
        cached = rng.randint(0, prompt) if "embeddings" not in route and rng.random() < 0.5 else 0
        services.record_usage(
            **usage_record(
                tenant.org.pk,
                f"{tag}-{n}",
                api_key_id=None if training else rng.choice([*keys, None]),
                route=route,
                model=model,
                prompt_tokens=prompt,
                cached_tokens=cached,
                completion_tokens=0 if training else rng.randint(0, 300),
                training_tokens=rng.randint(100, 5000) if training else 0,
                price=rng.choice(prices[model])["batch" if route.startswith("batch.") else "sync"],
                created_at=datetime.fromtimestamp(NOW - rng.randint(0, oldest), UTC),
            )
        )


@pytest.fixture
def ledger(tenant_a):
    """About 400 rows over three days: two models with two price versions each, two keys, some
    fine-tuning; most rolled up, then late rows into rolled-up hours and fresh rows not rolled up."""
    tenant_a.key()
    tenant_a.key()
    keys = [str(pk) for pk in APIKey.all_orgs.filter(organization=tenant_a.org).values_list("pk", flat=True)]
    prices = {
        "m-small": [_price("m-small", (100, 200, 50), 9), _price("m-small", (150, 250, 60), 1, cached=15)],
        "m-large": [_price("m-large", (1000, 3000, 400), 9), _price("m-large", (900, 2700, 350), 2, batch=(300, 1000))],
    }
    rng = random.Random(7)
    _write(tenant_a, rng, 300, keys, prices, tag="early", oldest=3 * DAY)
    assert rollups.roll_up() == 300
    _write(tenant_a, rng, 60, keys, prices, tag="late", oldest=3 * DAY)  # late arrivals into rolled-up hours
    _write(tenant_a, rng, 40, keys, prices, tag="fresh", oldest=HOUR)
    return tenant_a, keys


def expected(organization, start: int, end: int, width: int, group_by: tuple, routes) -> dict:
    """Straight from the ledger rows: bucket -> group -> [requests, in, out, training, cost, cached in]."""
    prices = {p.pk: p for p in Price.objects.all()}
    found: dict = defaultdict(lambda: defaultdict(lambda: [0, 0, 0, 0, 0, 0]))
    for row in UsageEvent.all_orgs.filter(organization=organization):
        ts = int(row.created_at.timestamp())
        if not start <= ts < end or (routes and row.route not in routes):
            continue
        batch = row.route.startswith("batch.")
        dimensions = {"model": row.model, "api_key_id": str(row.api_key_id) if row.api_key_id else None, "batch": batch}
        group = tuple(dimensions[d] for d in group_by)
        sums = found[ts - ts % width][group]
        price = prices[row.price_id]
        per_input, per_output = price.batch_amounts if batch else (price.input_per_token, price.output_per_token)
        per_cached = min(per_input, price.cached_amount) if batch else price.cached_amount
        # (prompt - cached) x input + cached x cached input + completion x output, exactly
        assert row.cost == (
            (row.prompt_tokens - row.cached_tokens) * per_input
            + row.cached_tokens * per_cached
            + row.completion_tokens * per_output
            + row.training_tokens * price.training_per_token
        )
        values = [1, row.prompt_tokens, row.completion_tokens, row.training_tokens, row.cost, row.cached_tokens]
        for i, value in enumerate(values):
            sums[i] += value
    return found


def all_pages(client, url: str, params: dict) -> list[dict]:
    buckets, page = [], None
    while True:
        response = client.get(url, {**params, **({"page": page} if page else {})})
        assert response.status_code == 200, response.content
        body = response.json()
        assert body["object"] == "page"
        buckets += body["data"]
        if not body["has_more"]:
            assert body["next_page"] is None
            return buckets
        page = body["next_page"]


WINDOWS = [
    ("1d", NOW - 3 * DAY - 1234, NOW + 1, ()),
    ("1d", NOW - 3 * DAY - 1234, NOW + 1, ("model",)),
    ("1h", NOW - 30 * HOUR - 17, NOW - 2 * HOUR + 5, ("model", "api_key_id")),
    ("1h", NOW - (NOW % HOUR) - 20 * HOUR, NOW - (NOW % HOUR), ("api_key_id",)),  # aligned to hours
    ("1m", NOW - 5 * HOUR, NOW + 1, ("model",)),
    ("1h", NOW - 30 * HOUR - 17, NOW + 1, ("model", "batch")),
    ("1d", NOW - 3 * DAY - 1234, NOW + 1, ("batch",)),
]


@pytest.mark.parametrize(("width", "start", "end", "group_by"), WINDOWS)
def test_completions_usage_equals_the_ledger(ledger, width, start, end, group_by):
    tenant, _ = ledger
    client = key_client(tenant.key(scopes=[Scope.BILLING_READ]))
    params = {"start_time": start, "end_time": end, "bucket_width": width, "group_by": list(group_by), "limit": 5}
    buckets = all_pages(client, "/v1/organization/usage/completions", params)
    seconds = {"1m": 60, "1h": HOUR, "1d": DAY}[width]
    want = expected(
        tenant.org, start, end, seconds, group_by, {"chat.completions", "completions", "batch.chat.completions"}
    )
    got: dict = defaultdict(dict)
    for bucket in buckets:
        assert bucket["start_time"] >= start and bucket["end_time"] <= end
        for result in bucket["results"]:
            assert result["object"] == "organization.usage.completions.result"
            group = tuple(result[d] for d in group_by)
            got[bucket["start_time"] - bucket["start_time"] % seconds][group] = [
                result["num_model_requests"],
                result["input_tokens"],
                result["output_tokens"],
                result["input_cached_tokens"],
            ]
    assert {b: {g: [*v[:3], v[5]] for g, v in groups.items()} for b, groups in want.items()} == got


@pytest.mark.parametrize(("width", "start", "end", "group_by"), WINDOWS[:3])
def test_embeddings_usage_equals_the_ledger(ledger, width, start, end, group_by):
    tenant, _ = ledger
    client = key_client(tenant.key(scopes=[Scope.BILLING_READ]))
    params = {"start_time": start, "end_time": end, "bucket_width": width, "group_by": list(group_by), "limit": 5}
    buckets = all_pages(client, "/v1/organization/usage/embeddings", params)
    seconds = {"1m": 60, "1h": HOUR, "1d": DAY}[width]
    want = expected(tenant.org, start, end, seconds, group_by, {"embeddings", "batch.embeddings"})
    got: dict = defaultdict(dict)
    for bucket in buckets:
        for result in bucket["results"]:
            assert result["object"] == "organization.usage.embeddings.result" and "output_tokens" not in result
            got[bucket["start_time"] - bucket["start_time"] % seconds][tuple(result[d] for d in group_by)] = [
                result["num_model_requests"],
                result["input_tokens"],
            ]
    assert want and {b: {g: v[:2] for g, v in groups.items()} for b, groups in want.items()} == got
    console = session_client(tenant.owner).get(f"/api/orgs/{tenant.org.slug}/billing/usage/embeddings/", params)
    assert console.status_code == 200 and console.json()["data"][0]["object"] == "bucket"
    assert buckets[0]["start_time"] == start and buckets[-1]["end_time"] == end
    assert len({b["start_time"] for b in buckets}) == len(buckets)  # each bucket once across the pages
    assert sum(v[0] for groups in got.values() for v in groups.values()) > 0


@pytest.mark.parametrize(("width", "start", "end", "group_by"), WINDOWS)
def test_costs_equal_the_ledger(ledger, width, start, end, group_by):
    tenant, _ = ledger
    client = session_client(tenant.owner)
    url = f"/api/orgs/{tenant.org.slug}/billing/costs/"
    params = {"start_time": start, "end_time": end, "bucket_width": width, "group_by": list(group_by), "limit": 4}
    buckets = all_pages(client, url, params)
    seconds = {"1m": 60, "1h": HOUR, "1d": DAY}[width]
    want = expected(tenant.org, start, end, seconds, group_by, None)
    got: dict = defaultdict(dict)
    for bucket in buckets:
        for result in bucket["results"]:
            assert result["amount"]["currency"] == money.currency()
            assert result["amount"]["value"] == float(Decimal(result["amount"]["exact"]))  # the same amount
            group = tuple(result[d] for d in group_by)
            got[bucket["start_time"] - bucket["start_time"] % seconds][group] = money.from_decimal(
                result["amount"]["exact"]
            )
    assert {b: {g: v[4] for g, v in groups.items()} for b, groups in want.items()} == got


def test_cost_line_items_split_each_model_by_meter(ledger):
    tenant, _ = ledger
    client = key_client(tenant.key(scopes=[Scope.BILLING_READ]))
    start = NOW - 4 * DAY
    buckets = all_pages(client, "/v1/organization/costs", {"start_time": start, "group_by": "line_item"})
    lines: dict = defaultdict(int)
    for bucket in buckets:
        for result in bucket["results"]:
            lines[result["line_item"]] += money.from_decimal(result["amount"]["exact"])
    prices = {p.pk: p for p in Price.objects.all()}
    want: dict = defaultdict(int)
    for row in UsageEvent.all_orgs.filter(organization=tenant.org):
        price = prices[row.price_id]
        uncached = row.prompt_tokens - row.cached_tokens
        if row.route.startswith("batch."):
            meters = [("batch input", uncached, price.batch_amounts[0])]
            meters.append(("batch cached input", row.cached_tokens, min(price.batch_amounts[0], price.cached_amount)))
            meters.append(("batch output", row.completion_tokens, price.batch_amounts[1]))
        else:
            meters = [("input", uncached, price.input_per_token)]
            meters.append(("cached input", row.cached_tokens, price.cached_amount))
            meters.append(("output", row.completion_tokens, price.output_per_token))
        for meter, tokens, unit in [*meters, ("training", row.training_tokens, price.training_per_token)]:
            if tokens:
                want[f"{row.model}, {meter}"] += tokens * unit
    lines = {item: amount for item, amount in lines.items() if amount}  # an input line all of whose tokens were cached
    assert lines == dict(want)
    assert "m-large, batch output" in lines and "m-small, batch input" in lines
    assert "m-small, cached input" in lines and "m-large, batch cached input" in lines
    assert sum(lines.values()) == sum(UsageEvent.all_orgs.values_list("cost", flat=True))


def test_rolling_up_again_changes_nothing_and_readers_agree_before_and_after(ledger):
    tenant, _ = ledger
    client = session_client(tenant.owner)
    url = f"/api/orgs/{tenant.org.slug}/billing/usage/completions/"
    params = {"start_time": NOW - 4 * DAY, "end_time": NOW + 1, "bucket_width": "1h", "limit": 168}
    before = client.get(url, params).json()
    assert UsageEvent.all_orgs.filter(rolled_up=False).count() == 100
    assert rollups.roll_up() == 100
    assert rollups.roll_up() == 0
    assert client.get(url, params).json() == before
    totals = UsageRollup.all_orgs.filter(organization=tenant.org).values_list("requests", flat=True)
    assert sum(totals) == UsageEvent.all_orgs.count() == 400


def test_filters_by_model_and_key(ledger):
    tenant, keys = ledger
    client = key_client(tenant.key(scopes=[Scope.BILLING_READ]))
    params = {"start_time": NOW - 4 * DAY, "end_time": NOW + 1, "models": "m-large", "api_key_ids": [keys[0]]}
    buckets = all_pages(client, "/v1/organization/usage/completions", {**params, "group_by": ["model", "api_key_id"]})
    results = [r for b in buckets for r in b["results"]]
    assert results and {(r["model"], r["api_key_id"]) for r in results} == {("m-large", keys[0])}
    want = UsageEvent.all_orgs.filter(
        model="m-large", api_key_id=keys[0], route__in=["chat.completions", "completions", "batch.chat.completions"]
    ).count()
    assert sum(r["num_model_requests"] for r in results) == want


@pytest.mark.parametrize(
    ("params", "param"),
    [
        ({}, "start_time"),
        ({"start_time": "yesterday"}, "start_time"),
        ({"start_time": 100, "end_time": 253402300800}, "end_time"),
        ({"start_time": 100, "bucket_width": "1w"}, "bucket_width"),
        ({"start_time": 100, "bucket_width": "1h", "limit": 1441}, "limit"),
        ({"start_time": 100, "group_by": "user_id"}, "group_by"),
        ({"start_time": 100, "api_key_ids": "nope"}, "api_key_ids"),
        ({"start_time": 100, "page": "not-a-cursor"}, "page"),
        ({"start_time": 100, "project_ids": "p"}, "project_ids"),
    ],
)
def test_bad_parameters_are_named(tenant_a, params, param):
    client = key_client(tenant_a.key(scopes=[Scope.BILLING_READ]))
    response = client.get("/v1/organization/usage/completions", params)
    assert response.status_code == 400, response.content
    assert response.json()["error"]["param"] == param


def test_another_organization_sees_nothing(ledger, tenant_b):
    tenant, keys = ledger
    params = {"start_time": NOW - 4 * DAY, "end_time": NOW + 1, "group_by": ["model", "api_key_id"]}
    outsider = key_client(tenant_b.key(scopes=[Scope.BILLING_READ]))
    for url in ("/v1/organization/usage/completions", "/v1/organization/usage/embeddings", "/v1/organization/costs"):
        buckets = all_pages(outsider, url, {**params, "api_key_ids": keys[0]})
        assert buckets and all(b["results"] == [] for b in buckets)
    b_owner = session_client(tenant_b.owner)
    for path in ("usage/completions/", "usage/embeddings/", "costs/"):
        assert b_owner.get(f"/api/orgs/{tenant.org.slug}/billing/{path}", params).status_code == 404


def test_keys_without_billing_read_are_refused(tenant_a):
    client = key_client(tenant_a.key(scopes=[Scope.INFERENCE]))
    response = client.get("/v1/organization/costs", {"start_time": NOW - DAY})
    assert response.status_code == 403
    assert "billing:read" in response.json()["error"]["message"]


@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_readers_stay_exact_while_a_rollup_pass_runs(make_tenant, monkeypatch):
    """PostgreSQL, real concurrency: while another connection rolls rows up in small batches, every
    read still counts each row exactly once (rollups and raw rows read in one snapshot)."""
    from django.db import connection

    if connection.vendor != "postgresql":
        pytest.skip("concurrent transactions need PostgreSQL")
    import threading

    from billing import reports

    tenant = make_tenant("rolling")
    created = datetime.fromtimestamp(NOW - 2 * HOUR, UTC)
    services.ingest_usage(
        [usage_record(tenant.org.pk, f"r{n}", created_at=created + timedelta(seconds=n)) for n in range(2000)]
    )
    monkeypatch.setattr(rollups, "BATCH", 40)
    done = threading.Event()

    def pass_in_background():
        try:
            rollups.roll_up()
        finally:
            from django.db import connection as own

            own.close()
            done.set()

    threading.Thread(target=pass_in_background).start()
    query = reports.Query(tenant.org.pk, NOW - DAY, NOW + 1, HOUR)
    reads = []
    while not done.is_set():
        found = reports.sums(query)
        reads.append(sum(v[0] for groups in found.values() for v in groups.values()))
    assert set(reads) == {2000} and len(reads) > 3
    assert UsageEvent.all_orgs.filter(rolled_up=False).count() == 0


def test_a_range_that_ends_before_it_starts_is_an_empty_page(tenant_a):
    client = key_client(tenant_a.key(scopes=[Scope.BILLING_READ]))
    for path in ("/v1/organization/usage/completions", "/v1/organization/costs"):
        response = client.get(path, {"start_time": NOW, "end_time": NOW - 86400})
        assert response.status_code == 200, response.content
        assert response.json()["data"] == [] and response.json()["has_more"] is False
    # A limit past what a page of that bucket width holds is that many: the next page goes on.
    ten_days_ago = (NOW // 86400 - 10) * 86400
    wide = client.get(
        "/v1/organization/usage/completions", {"start_time": ten_days_ago, "bucket_width": "1d", "limit": 100}
    )
    assert wide.status_code == 200 and len(wide.json()["data"]) == 11, wide.content  # and today's
    hourly = client.get(
        "/v1/organization/usage/completions", {"start_time": NOW - 10 * 86400, "bucket_width": "1h", "limit": 1000}
    )
    assert len(hourly.json()["data"]) == 168 and hourly.json()["has_more"] is True
