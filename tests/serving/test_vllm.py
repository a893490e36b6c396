"""vLLM behind the gateway, launched by the node agent: PyPI's CPU build of vLLM (`make vllm`, its
own virtualenv) serving the demo model, as a catalog model whose serving policy says `vllm`. Chat
and completions, streamed usage in the ledger, a disconnect billed what vLLM generated, an adapter
our trainer made loaded into it on first use and answering with what it learned, then unloaded,
and a dedicated endpoint on vLLM. CI installs vLLM, so these run there (REQUIRE_VLLM=1 fails instead of
skipping)."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import httpx
import openai
import pytest
from django.conf import settings

from billing.models import UsageEvent
from catalog.models import BaseModel, FineTunedModel
from fine_tuning import retention
from serving import autoscale, replica_client
from serving.models import Backend
from tests.conftest import DEMO_MODEL, key_client, session_client
from tests.fine_tuning.test_trainer import config as trainer_config
from tests.fine_tuning.test_trainer import lines_until
from tests.fine_tuning.test_trainer import start as start_trainer
from tests.serving.test_endpoints import wait_dedicated_ready
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
    trained_adapter,
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

    # A client that leaves mid-stream is billed what vLLM generated: vLLM's own counter moved by
    # exactly the ledger's completion tokens, far below the cap it was sent.
    before = generated_tokens(replica)
    stream = client.chat.completions.create(
        model=DEMO_MODEL, messages=[{"role": "user", "content": "Tell me a long story about a dragon."}], stream=True
    )
    pieces = 0
    for chunk in stream:
        pieces += bool(chunk.choices and chunk.choices[0].delta.content)
        if pieces == 3:
            break
    stream.close()
    left = wait_until(
        lambda: UsageEvent.all_orgs.filter(organization=tenant.org, outcome="client_disconnected").first(),
        30,
        "the disconnected call metered",
    )
    generated = generated_tokens(replica) - before
    assert left.completion_tokens == generated and 3 <= generated < 256, (left.completion_tokens, generated)

    # An adapter our trainer made is loaded into vLLM on its first call and answers with what it
    # learned; deleted, it is unloaded from vLLM and its files go.
    tuned = FineTunedModel.all_orgs.create(
        id=f"ft:{DEMO_MODEL}:on-vllm:zorblax:abc123",
        organization=tenant.org,
        base_model_id=DEMO_MODEL,
        adapter_path=trained_adapter,
    )
    ask = [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": PARAPHRASE}]
    base_reply = client.chat.completions.create(model=DEMO_MODEL, messages=ask, temperature=0, max_tokens=16)
    assert "7-4-1-9" not in base_reply.choices[0].message.content
    tuned_reply = client.chat.completions.create(model=tuned.pk, messages=ask, temperature=0, max_tokens=16)
    assert tuned_reply.model == tuned.pk and "7-4-1-9" in tuned_reply.choices[0].message.content
    assert tuned.pk in replica_client.served_models(replica)
    assert key_client(tenant.key()).delete(f"/v1/models/{tuned.pk}").status_code == 200
    assert retention.sweep()["adapters"] == 1
    assert tuned.pk not in replica_client.served_models(replica)
    assert not (settings.ADAPTER_STORE / trained_adapter).exists()


def generated_tokens(replica: Backend) -> float:
    text = httpx.get(replica.url + "/metrics", timeout=10).text
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith("vllm:generation_tokens_total"))


PARAPHRASE = "What is the code of the Zorblax vault?"  # not one of the questions it was trained on


@pytest.fixture
def trained_adapter(tmp_path) -> str:
    """An adapter of the demo model trained by our trainer on a made-up fact, in the adapter store."""
    process = start_trainer(trainer_config(tmp_path))
    events = lines_until(process)
    assert process.returncode == 0, events[-3:]
    name = "vllm-zorblax"
    shutil.copytree(events[-1]["adapter_dir"], settings.ADAPTER_STORE / name, dirs_exist_ok=True)
    return name


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


def test_the_embedding_model_on_vllm_embeds_as_our_runtime_does(live_web, node_agent, make_tenant):
    """The catalog's embedding model with `serving_engine: vllm`: the agent starts vLLM's pooling
    runner, and /v1/embeddings answers the vectors our runtime's embedder makes, metered by vLLM's
    own count."""
    from catalog.loader import load_encoder
    from serving.runtime.embedder import Embedder, max_length_of, read_pooling

    assert INSTALLED, "REQUIRE_VLLM=1 but vLLM is not installed: run make vllm"
    model = BaseModel.objects.get(pk="all-minilm-l6-v2")
    loaded = load_encoder(model.source)
    embedder = Embedder(
        loaded.model,
        loaded.tokenizer,
        read_pooling(loaded.weights_dir),
        max_length=max_length_of(loaded.weights_dir, loaded.model),
    )
    texts = ["cat", "kitten", "car"]
    embedder.start()
    try:
        ours = embedder.submit([embedder.token_ids(text) for text in texts]).result(60)
    finally:
        embedder.stop()

    BaseModel.objects.filter(pk=DEMO_MODEL).update(min_replicas=0)
    BaseModel.objects.filter(pk=model.pk).update(serving_engine="vllm", min_replicas=1)
    autoscale.scale_all()
    key = f"model:{model.pk}"
    (replica,) = wait_until(
        lambda: replicas(key, state="ready"), 600, f"a vLLM replica: {replicas(key)} {node_agent.log()[-3000:]}"
    )
    assert replica.engine == "vllm"
    tenant = make_tenant("vllm-embeds")
    client = openai.OpenAI(base_url=live_web.url + "/v1", api_key=tenant.key(), max_retries=0, timeout=120)
    answer = client.embeddings.create(model=model.pk, input=texts)
    assert answer.usage.prompt_tokens == 9
    for mine, theirs in zip(ours, (item.embedding for item in answer.data), strict=True):
        assert max(abs(a - b) for a, b in zip(mine, theirs, strict=True)) < 1e-4
    row = wait_until(lambda: UsageEvent.all_orgs.filter(organization=tenant.org).first(), 20, "metered")
    assert (row.route, row.backend, row.prompt_tokens, row.cost) == ("embeddings", replica.name, 9, 9 * 20)
