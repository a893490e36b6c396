"""Our runtime's prompt cache on the demo model: a second call with the same long system prompt
reuses its keys and values (cached_tokens >= 1024) and answers exactly what it answers without
the cache; another organization's call (another cache salt) is never a hit; a call without a salt
is neither cached nor served from the cache."""

import pytest
from django.conf import settings

from catalog.loader import load_model
from serving.runtime import runners
from serving.runtime.adapters import AdapterManager
from serving.runtime.engine import Engine, GenerationRequest
from serving.runtime.prefix_cache import BLOCK
from serving.runtime.sampling import SamplingParams
from tests.conftest import DEMO_SOURCE
from tests.serving.test_batch_isolation import Sink

pytestmark = pytest.mark.slow
RULES = " ".join(
    f"Rule {n}: answer politely, name the product 'Harbor' when it fits, and keep replies short." for n in range(64)
)


@pytest.fixture(scope="module")
def engines(tmp_path_factory):
    loaded = load_model(DEMO_SOURCE, settings.MODEL_CACHE_DIR)
    manager = AdapterManager(loaded.model, tmp_path_factory.mktemp("adapters"), max_loaded=1)

    def runner():
        return runners.for_loaded(loaded, manager, settings.MODEL_CACHE_DIR, max_len=2048)

    cached = Engine(loaded.model, loaded.tokenizer, manager, max_batch=4, prompt_cache_bytes=256 << 20, runner=runner())
    plain = Engine(loaded.model, loaded.tokenizer, manager, max_batch=4, runner=runner())
    for engine in (cached, plain):
        engine.start()
    yield cached, plain
    for engine in (cached, plain):
        engine.stop()


def ask(engine, question: str, namespace: str | None):
    messages = [{"role": "system", "content": RULES}, {"role": "user", "content": question}]
    ids = engine.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False)
    sink = Sink()
    request = GenerationRequest(
        list(ids), SamplingParams(max_tokens=16, temperature=0.0), sink, cache_namespace=namespace
    )
    engine.submit(request)
    text, _, usage = sink.result()
    return text, usage


def test_the_same_long_system_prompt_is_computed_once_per_organization(engines):
    cached, plain = engines
    first_text, first = ask(cached, "What is Harbor?", "org-1")
    assert first["prompt_tokens"] > 1500 and first["prompt_tokens_details"] == {"cached_tokens": 0}

    text, usage = ask(cached, "How do I reset my password?", "org-1")
    hit = usage["prompt_tokens_details"]["cached_tokens"]
    assert hit >= 1024 and hit % BLOCK == 0 and hit < usage["prompt_tokens"]
    plain_text, plain_usage = ask(plain, "How do I reset my password?", None)
    assert (text, usage["completion_tokens"]) == (plain_text, plain_usage["completion_tokens"])

    other_text, other = ask(cached, "How do I reset my password?", "org-2")
    assert other["prompt_tokens_details"] == {"cached_tokens": 0} and other_text == text
    unsalted_text, unsalted = ask(cached, "What is Harbor?", None)
    assert "prompt_tokens_details" not in unsalted and unsalted_text == first_text
    again = ask(cached, "How do I reset my password?", "org-2")[1]  # org-2's own prompt is cached now
    assert again["prompt_tokens_details"]["cached_tokens"] >= 1024
