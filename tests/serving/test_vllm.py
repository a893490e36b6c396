"""vLLM behind the gateway, launched by the node agent: PyPI's CPU build of vLLM (`make vllm`, its
own virtualenv) serving the demo model, as a catalog model whose serving policy says `vllm`. Chat
and completions, streamed usage in the ledger, an `ft:` adapter loaded into it on first use, and a
dedicated endpoint on vLLM. CI installs vLLM, so these run there (REQUIRE_VLLM=1 fails instead of
skipping)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import openai
import pytest
from django.conf import settings

from billing.models import UsageEvent
from catalog.models import BaseModel, FineTunedModel
from serving import autoscale
from serving.models import Backend
from tests.conftest import DEMO_MODEL, session_client
from tests.serving.test_endpoints import adapter_dir, wait_dedicated_ready  # noqa: F401 - the fixture
from tests.serving.test_pool_replicas import alive, replicas, wait_until

INSTALLED = Path(settings.VLLM_PYTHON).exists()
pytestmark = [
    pytest.mark.slow,
    pytest.mark.django_db(transaction=True, serialized_rollback=True),
    pytest.mark.skipif(
        not INSTALLED and os.environ.get("REQUIRE_VLLM") != "1", reason="vLLM is not installed (make vllm)"
    ),
]
KEY = f"model:{DEMO_MODEL}"
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


def serve_with_vllm() -> None:
    BaseModel.objects.filter(pk=DEMO_MODEL).update(serving_engine="vllm", serving_dtype="bfloat16", min_replicas=1)


def test_vllm_started_by_the_agent_serves_chat_completions_and_adapters_with_exact_usage(
    live_web,
    node_agent,
    make_tenant,
    adapter_dir,  # noqa: F811
):
    assert INSTALLED, "REQUIRE_VLLM=1 but vLLM is not installed: run make vllm"
    serve_with_vllm()
    started = time.monotonic()
    autoscale.scale_all()
    (replica,) = wait_until(
        lambda: replicas(KEY, state="ready"), 600, f"a vLLM replica: {replicas(KEY)} {node_agent.log()[-3000:]}"
    )
    print(f"vLLM replica ready {time.monotonic() - started:.0f} s after it was placed")
    assert replica.engine == "vllm" and alive(replica.pid)

    tenant = make_tenant("on-vllm")
    client = openai.OpenAI(base_url=live_web.url + "/v1", api_key=tenant.key(), max_retries=0, timeout=120)
    chat = client.chat.completions.create(model=DEMO_MODEL, messages=QUESTION, temperature=0)
    assert "Paris" in chat.choices[0].message.content
    completion = client.completions.create(model=DEMO_MODEL, prompt="The capital of France is", max_tokens=8)
    assert completion.choices[0].text and completion.usage.completion_tokens <= 8

    stream = client.chat.completions.create(
        model=DEMO_MODEL, messages=QUESTION, stream=True, stream_options={"include_usage": True}, max_tokens=16
    )
    chunks = list(stream)
    usage = chunks[-1].usage
    assert usage is not None and usage.completion_tokens >= 1
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text
    rows = wait_until(
        lambda: (
            (r := list(UsageEvent.all_orgs.filter(organization=tenant.org).order_by("created_at")))
            and len(r) == 3
            and r
        ),
        20,
        "three calls metered",
    )
    assert (rows[-1].prompt_tokens, rows[-1].completion_tokens) == (usage.prompt_tokens, usage.completion_tokens)
    assert rows[0].completion_tokens == chat.usage.completion_tokens

    # An ft: model's adapter is loaded into vLLM on its first call, and answers.
    tuned = FineTunedModel.all_orgs.create(
        id=f"ft:{DEMO_MODEL}:on-vllm:lora:abc123",
        organization=tenant.org,
        base_model_id=DEMO_MODEL,
        adapter_path=str(settings.ADAPTER_STORE / adapter_dir),
    )
    tuned_reply = client.chat.completions.create(model=tuned.pk, messages=QUESTION, max_tokens=8)
    assert tuned_reply.model == tuned.pk and tuned_reply.usage.completion_tokens >= 1


def test_a_dedicated_endpoint_on_vllm_runs_its_own_vllm_engine(live_web, node_agent, make_tenant):
    assert INSTALLED, "REQUIRE_VLLM=1 but vLLM is not installed: run make vllm"
    serve_with_vllm()
    BaseModel.objects.filter(pk=DEMO_MODEL).update(min_replicas=0)
    tenant = make_tenant("vllm-dedicated")
    owner = session_client(tenant.owner)
    created = owner.post(
        f"/api/orgs/{tenant.org.slug}/endpoints/",
        {"name": "own-vllm", "model": DEMO_MODEL, "billing_mode": "dedicated"},
        format="json",
    )
    endpoint_id = created.json()["id"]
    wait_dedicated_ready(endpoint_id, timeout=600)
    (own,) = replicas(endpoint_id, state="ready")
    assert own.engine == "vllm"
    client = openai.OpenAI(base_url=live_web.url + "/v1", api_key=tenant.key(), max_retries=0, timeout=120)
    assert client.chat.completions.create(model=endpoint_id, messages=QUESTION, max_tokens=8).choices[0].message
    owner.post(f"/api/orgs/{tenant.org.slug}/endpoints/{endpoint_id}/stop/")
    wait_until(lambda: Backend.objects.get(pk=own.pk).state == "ended", 90, "its replica ended")
    assert not alive(own.pid)
