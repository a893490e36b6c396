"""The prompt cache through the platform, with the official SDK: the second call with the same
long system prompt reports cached_tokens >= 1024 (plain and streamed), its ledger row keeps them,
and it costs exactly (prompt - cached) x input + cached x cached input + completion x output;
another organization sending the same prompt gets no cached tokens."""

import openai
import pytest

from billing import services as billing
from tenancy.audit import Actor
from tests.conftest import DEMO_MODEL, usage_row
from tests.serving.test_prompt_cache import RULES

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True, serialized_rollback=True)]
INPUT, CACHED, OUTPUT = 1000, 100, 2000  # nano-units a token: 1, 0.1 and 2 per million


def ask(client: openai.OpenAI, question: str, **extra):
    messages = [{"role": "system", "content": RULES}, {"role": "user", "content": question}]
    return client.chat.completions.create(model=DEMO_MODEL, messages=messages, temperature=0, max_tokens=8, **extra)


def test_a_cached_system_prompt_is_reported_and_billed_at_the_cached_price(live_web, runtime_server, make_tenant):
    runtime_server.register()
    cached_system_prompt_billed_and_kept_apart(live_web, make_tenant)


def test_vllm_reports_its_prefix_cache_and_keeps_organizations_apart(live_web, node_agent, make_tenant):
    import os

    from serving import autoscale
    from tests.serving.test_pool_replicas import replicas, wait_until
    from tests.serving.test_vllm import INSTALLED, KEY, serve_with_vllm

    if not INSTALLED and os.environ.get("REQUIRE_VLLM") != "1":
        pytest.skip("vLLM is not installed (make vllm)")
    serve_with_vllm()
    autoscale.scale_all()
    wait_until(lambda: replicas(KEY, state="ready"), 600, f"a vLLM replica: {node_agent.log()[-3000:]}")
    cached_system_prompt_billed_and_kept_apart(live_web, make_tenant)


def cached_system_prompt_billed_and_kept_apart(live_web, make_tenant):
    billing.set_price(
        model=DEMO_MODEL,
        organization_id=None,
        input_per_million="1",
        output_per_million="2",
        training_per_million="0",
        input_cached_per_million="0.1",
        actor=Actor(),
    )
    first_org, second_org = make_tenant("cache-one"), make_tenant("cache-two")
    client = openai.OpenAI(base_url=live_web.url + "/v1", api_key=first_org.key(), max_retries=0, timeout=120)
    ask(client, "What is Harbor?")
    again = ask(client, "How do I reset my password?")
    cached = again.usage.prompt_tokens_details.cached_tokens
    assert cached >= 1024 and cached < again.usage.prompt_tokens
    row = usage_row(again._request_id)
    assert (row.prompt_tokens, row.cached_tokens, row.completion_tokens) == (
        again.usage.prompt_tokens,
        cached,
        again.usage.completion_tokens,
    )
    assert row.cost == (row.prompt_tokens - cached) * INPUT + cached * CACHED + row.completion_tokens * OUTPUT

    chunks = list(ask(client, "Where is my order?", stream=True, stream_options={"include_usage": True}))
    assert chunks[-1].usage.prompt_tokens_details.cached_tokens >= 1024

    outsider = openai.OpenAI(base_url=live_web.url + "/v1", api_key=second_org.key(), max_retries=0, timeout=120)
    theirs = ask(outsider, "How do I reset my password?")
    assert theirs.usage.prompt_tokens_details.cached_tokens == 0
    assert usage_row(theirs._request_id).cached_tokens == 0
