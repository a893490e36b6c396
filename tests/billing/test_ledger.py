import uuid

from billing import services
from billing.models import UsageEvent
from tenancy.models import APIKey
from tests.billing.usage import usage_record


def record(tenant, request_id: str, key_id=None, **overrides):
    values = {"api_key_id": key_id, "backend": "b", "streamed": True, "latency_ms": 12, "time_to_first_token_ms": 3}
    services.record_usage(**usage_record(tenant.org.pk, request_id, **{**values, **overrides}))


def test_ledger_rows_are_exact_and_unique_per_request(tenant_a):
    tenant_a.key()
    key_id = str(APIKey.all_orgs.get(organization=tenant_a.org).pk)
    record(tenant_a, "req_1", key_id)
    record(tenant_a, "req_1", key_id, completion_tokens=999)  # a retried write does not count twice
    record(tenant_a, "req_2", None, time_to_first_token_ms=None, streamed=False)
    rows = list(UsageEvent.all_orgs.order_by("request_id"))
    assert [(r.request_id, r.completion_tokens, r.api_key_id, r.streamed, r.time_to_first_token_ms) for r in rows] == [
        ("req_1", 5, uuid.UUID(key_id), True, 3),
        ("req_2", 5, None, False, None),
    ]
    assert rows[0].organization_id == tenant_a.org.pk and rows[0].total_tokens == 15
    assert rows[0].created_at is not None
