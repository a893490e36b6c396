"""Published endpoints on the real runtime with a small LoRA adapter: publish an ft: model as
`ep-…`, call it with the official openai SDK (its defaults and system prompt applied, its limits
enforced), stop it (404, usage kept), and keep other keys and organizations out."""

from __future__ import annotations

import time

import openai
import pytest
import torch
from django.conf import settings

from billing.models import UsageEvent
from catalog.models import FineTunedModel
from serving import endpoints
from serving.models import Endpoint
from tenancy.models import APIKey
from tests.conftest import DEMO_MODEL, DEMO_SOURCE, key_client, session_client

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True, serialized_rollback=True)]
SYSTEM = "You answer in one short sentence."


@pytest.fixture(scope="module")
def adapter_dir():
    """A small LoRA adapter of the demo model, in the adapter store the runtime loads from."""
    from peft import LoraConfig, get_peft_model

    from catalog.loader import load_model

    loaded = load_model(DEMO_SOURCE, settings.MODEL_CACHE_DIR)
    torch.manual_seed(5)
    config = LoraConfig(r=8, lora_alpha=32, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    name = "endpoint-test-adapter"
    get_peft_model(loaded.model, config).save_pretrained(settings.ADAPTER_STORE / name, safe_serialization=True)
    return name


def wait_for(endpoint_id: str, status: str, timeout: float = 60) -> Endpoint:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        endpoint = Endpoint.all_orgs.get(pk=endpoint_id)
        if endpoint.status == status:
            return endpoint
        time.sleep(0.2)
    raise AssertionError(f"{endpoint_id} is {endpoint.status} ({endpoint.status_reason}), not {status}")


def wait_dedicated_ready(endpoint_id: str, timeout: float = 240) -> Endpoint:
    """A dedicated endpoint, once its own replicas (started by the node agent) serve it. Publishing
    again is what the task its agent sends when a replica becomes ready does (no worker here)."""
    from serving.models import Backend

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        endpoint = Endpoint.all_orgs.get(pk=endpoint_id)
        if endpoint.status == "ready":
            return endpoint
        if Backend.objects.filter(deployment__key=endpoint_id, state="ready").exists():
            endpoints.publish(endpoint_id)
        time.sleep(0.5)
    raise AssertionError(f"{endpoint_id} is {endpoint.status} ({endpoint.status_reason}), not ready")


def test_publish_call_limit_stop(live_web, runtime_server, make_tenant, adapter_dir):
    runtime_server.register()
    tenant = make_tenant("publisher")
    tuned = FineTunedModel.all_orgs.create(
        id=f"ft:{DEMO_MODEL}:publisher:ep:abc123",
        organization=tenant.org,
        base_model_id=DEMO_MODEL,
        adapter_path=adapter_dir,
    )
    owner = session_client(tenant.owner)
    response = owner.post(
        f"/api/orgs/{tenant.org.slug}/endpoints/",
        {
            "name": "support-bot",
            "model": tuned.pk,
            "defaults": {"temperature": 0, "max_tokens": 12},
            "system_prompt": SYSTEM,
            "rpm_limit": 3,
        },
        format="json",
    )
    assert response.status_code == 201, response.content
    endpoint_id = response.json()["id"]
    assert endpoint_id.startswith("ep-")
    wait_for(endpoint_id, "ready")
    detail = owner.get(f"/api/orgs/{tenant.org.slug}/endpoints/{endpoint_id}/").json()
    assert detail["placements"] == [
        {
            "replica": "test-runtime",
            "state": "serving",
            "last_error": "",
            "probed_at": detail["placements"][0]["probed_at"],
        }
    ]

    key = tenant.key()
    client = openai.OpenAI(base_url=f"{live_web.url}/v1", api_key=key, max_retries=0)
    question = [{"role": "user", "content": "Name a colour."}]
    # The limit's windows are whole minutes: the four calls below must share one, so they do not
    # start in the last 20 seconds of a minute (a busy machine made them straddle two).
    if time.time() % 60 > 40:
        time.sleep(60.5 - time.time() % 60)
    via_endpoint = client.chat.completions.create(model=endpoint_id, messages=question)
    assert via_endpoint.model == endpoint_id
    # Its own limit: 3 requests a minute across every key; the 4th is refused with retry-after.
    client.chat.completions.create(model=endpoint_id, messages=question)
    client.chat.completions.create(model=endpoint_id, messages=question)
    with pytest.raises(openai.RateLimitError) as refused:
        client.chat.completions.create(model=endpoint_id, messages=question)
    # The same as calling the fine-tuned model with the endpoint's defaults and system prompt spelled out.
    spelled_out = client.chat.completions.create(
        model=tuned.pk, messages=[{"role": "system", "content": SYSTEM}, *question], temperature=0, max_tokens=12
    )
    assert via_endpoint.choices[0].message.content == spelled_out.choices[0].message.content
    base = client.chat.completions.create(
        model=DEMO_MODEL, messages=[{"role": "system", "content": SYSTEM}, *question], temperature=0, max_tokens=12
    )
    assert base.choices[0].message.content != via_endpoint.choices[0].message.content  # the adapter's behaviour
    assert via_endpoint.usage.completion_tokens <= 12
    assert int(refused.value.response.headers["retry-after"]) >= 1
    assert "endpoint" in refused.value.message

    deadline = time.monotonic() + 15
    while UsageEvent.all_orgs.filter(endpoint_id=endpoint_id).count() < 3 and time.monotonic() < deadline:
        time.sleep(0.2)
    rows = UsageEvent.all_orgs.filter(endpoint_id=endpoint_id)
    assert rows.count() == 3 and {r.model for r in rows} == {tuned.pk} and all(r.cost > 0 for r in rows)

    # Stop: calls get 404 in the OpenAI shape; the usage history stays.
    assert owner.post(f"/api/orgs/{tenant.org.slug}/endpoints/{endpoint_id}/stop/").json()["status"] == "stopped"
    with pytest.raises(openai.NotFoundError) as gone:
        client.chat.completions.create(model=endpoint_id, messages=question)
    assert gone.value.body["code"] == "model_not_found"
    assert UsageEvent.all_orgs.filter(endpoint_id=endpoint_id).count() == 3


def test_access_list_and_other_organizations(live_web, runtime_server, make_tenant, tenant_b):
    runtime_server.register()
    tenant = make_tenant("guarded")
    tenant.key()
    allowed = str(APIKey.all_orgs.filter(organization=tenant.org).first().pk)
    owner = session_client(tenant.owner)
    response = owner.post(
        f"/api/orgs/{tenant.org.slug}/endpoints/",
        {"model": DEMO_MODEL, "allowed_key_ids": [allowed], "defaults": {"max_tokens": 2}},
        format="json",
    )
    assert response.status_code == 201, response.content
    endpoint_id = response.json()["id"]
    wait_for(endpoint_id, "ready")
    other_key = tenant.key()
    client = openai.OpenAI(base_url=f"{live_web.url}/v1", api_key=other_key, max_retries=0)
    with pytest.raises(openai.PermissionDeniedError) as denied:
        client.chat.completions.create(model=endpoint_id, messages=[{"role": "user", "content": "Hi"}])
    assert denied.value.body["code"] == "endpoint_access_denied"

    outsider = openai.OpenAI(base_url=f"{live_web.url}/v1", api_key=tenant_b.key(), max_retries=0)
    with pytest.raises(openai.NotFoundError):
        outsider.chat.completions.create(model=endpoint_id, messages=[{"role": "user", "content": "Hi"}])
    b_owner = session_client(tenant_b.owner)
    assert b_owner.get(f"/api/orgs/{tenant.org.slug}/endpoints/{endpoint_id}/").status_code == 404
    assert b_owner.get(f"/api/orgs/{tenant_b.org.slug}/endpoints/{endpoint_id}/").status_code == 404
    assert b_owner.post(f"/api/orgs/{tenant_b.org.slug}/endpoints/{endpoint_id}/stop/").status_code == 404
    assert key_client(tenant_b.key()).get(f"/api/orgs/{tenant_b.org.slug}/endpoints/").json()["data"] == []

    bad = owner.post(
        f"/api/orgs/{tenant.org.slug}/endpoints/", {"model": DEMO_MODEL, "defaults": {"logprobs": True}}, format="json"
    )
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "defaults"
    # A default a caller could not send either is refused when it is saved, not on every call.
    hot = owner.post(
        f"/api/orgs/{tenant.org.slug}/endpoints/",
        {"model": DEMO_MODEL, "name": "hot", "defaults": {"temperature": 5}},
        format="json",
    )
    assert hot.status_code == 400 and hot.json()["error"]["param"] == "defaults"
    assert "defaults.temperature" in hot.json()["error"]["message"]
    embedding = owner.post(
        f"/api/orgs/{tenant.org.slug}/endpoints/", {"model": "all-minilm-l6-v2", "name": "vectors"}, format="json"
    )
    assert embedding.status_code == 400 and embedding.json()["error"]["code"] == "model_not_supported"
    missing = owner.post(f"/api/orgs/{tenant.org.slug}/endpoints/", {"model": "no-such-model"}, format="json")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "model_not_found"


def test_a_restarted_replica_gets_its_endpoint_back_without_anyone_acting(make_tenant, adapter_dir, tmp_path):
    from serving import reconcile, services
    from tests.conftest import start_runtime

    runtime = start_runtime(tmp_path / "runtime.log")
    port = int(runtime.url.rsplit(":", 1)[1])
    try:
        services.register_backend(name="restarting", url=runtime.url, base_model=DEMO_MODEL, api_key=runtime.api_key)
        tenant = make_tenant("restarts")
        tuned = FineTunedModel.all_orgs.create(
            id=f"ft:{DEMO_MODEL}:restarts:ep:def456",
            organization=tenant.org,
            base_model_id=DEMO_MODEL,
            adapter_path=adapter_dir,
        )
        owner = session_client(tenant.owner)
        created = owner.post(f"/api/orgs/{tenant.org.slug}/endpoints/", {"model": tuned.pk}, format="json").json()
        endpoint_id = created["id"]
        wait_for(endpoint_id, "ready")
        assert reconcile.reconcile()[endpoint_id] == "ready"  # nothing to do

        runtime.process.kill()
        runtime.process.wait(20)
        assert reconcile.reconcile()[endpoint_id] == "failed"
        down = Endpoint.all_orgs.get(pk=endpoint_id)
        assert "cannot be reached" in down.status_reason

        runtime = start_runtime(tmp_path / "runtime.log", port=port, key=runtime.api_key)  # empty: no adapters
        assert tuned.pk not in {m["id"] for m in httpx_models(runtime)}
        assert reconcile.reconcile()[endpoint_id] == "ready"
        assert tuned.pk in {m["id"] for m in httpx_models(runtime)}  # the adapter is back
    finally:
        runtime.process.terminate()
        runtime.process.wait(20)


def httpx_models(runtime) -> list[dict]:
    import httpx

    answer = httpx.get(f"{runtime.url}/v1/models", headers={"Authorization": f"Bearer {runtime.api_key}"}, timeout=10)
    return answer.json()["data"]


def test_endpoint_metrics_come_from_the_ledger(make_tenant, tenant_b):
    from datetime import timedelta

    from django.utils import timezone

    from billing import services
    from tests.billing.usage import usage_record

    tenant = make_tenant("measured")
    endpoint = Endpoint.all_orgs.create(
        id="ep-0123456789abcdef", organization=tenant.org, name="m", model=DEMO_MODEL, base_model_id=DEMO_MODEL
    )
    now = timezone.now()
    for n in range(20):  # the last hour: latencies 10..200 ms, two errors
        services.record_usage(
            **usage_record(
                tenant.org.pk,
                f"m-{n}",
                endpoint_id=endpoint.pk,
                latency_ms=10 * (n + 1),
                time_to_first_token_ms=n + 1,
                prompt_tokens=30,
                completion_tokens=30,
                status_code=502 if n < 2 else 200,
                outcome="upstream_error" if n < 2 else "ok",
                created_at=now - timedelta(minutes=n),
            )
        )
    for n in range(10):  # earlier today
        services.record_usage(
            **usage_record(tenant.org.pk, f"d-{n}", endpoint_id=endpoint.pk, created_at=now - timedelta(hours=5))
        )
    owner = session_client(tenant.owner)
    body = owner.get(f"/api/orgs/{tenant.org.slug}/endpoints/{endpoint.pk}/metrics/").json()
    hour, day = body["last_hour"], body["last_day"]
    assert (hour["requests"], hour["tokens"], hour["error_rate"]) == (20, 1200, 0.1)
    assert hour["requests_per_minute"] == round(20 / 60, 3) and hour["tokens_per_minute"] == 20.0
    assert hour["latency_ms"] == {"p50": 100, "p95": 190}
    assert hour["time_to_first_token_ms"] == {"p50": 10, "p95": 19}
    assert day["requests"] == 30 and day["tokens"] == 1200 + 10 * 15
    assert (
        session_client(tenant_b.owner).get(f"/api/orgs/{tenant.org.slug}/endpoints/{endpoint.pk}/metrics/").status_code
        == 404
    )
