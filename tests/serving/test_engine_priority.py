"""Batch (Batch API) rows yield to interactive requests: an interactive request arriving while
batch rows decode has the batch to itself from the next step (the default lets no batch row decode
beside interactive work) and finishes first, and the batch rows that made room come back and go on
where they were, to the same greedy answer as without the interruption."""

import time

import pytest
from django.conf import settings

from catalog.loader import load_model
from serving.runtime import metrics, runners
from serving.runtime.adapters import AdapterManager
from serving.runtime.engine import BATCH, INTERACTIVE, Engine, GenerationRequest
from serving.runtime.sampling import SamplingParams
from tests.conftest import DEMO_SOURCE
from tests.serving.test_batch_isolation import Sink

pytestmark = pytest.mark.slow
BATCH_PROMPTS = ["Tell me about the sea.", "Describe a forest in autumn."]


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    loaded = load_model(DEMO_SOURCE, settings.MODEL_CACHE_DIR)
    manager = AdapterManager(loaded.model, tmp_path_factory.mktemp("adapters"), max_loaded=1)
    runner = runners.for_loaded(loaded, manager, settings.MODEL_CACHE_DIR, max_len=2048)
    engine = Engine(loaded.model, loaded.tokenizer, manager, max_batch=2, runner=runner)
    engine.start()
    yield engine
    engine.stop()


def submit(engine, prompt: str, priority: int, max_tokens: int) -> tuple[GenerationRequest, Sink]:
    ids = engine.tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=True, return_dict=False
    )
    sink = Sink()
    params = SamplingParams(max_tokens=max_tokens, temperature=0.0)
    request = GenerationRequest(list(ids), params, sink, priority=priority)
    engine.submit(request)
    return request, sink


def preempted() -> float:
    return metrics.PREEMPTED_ROWS._value.get()


def test_an_interactive_request_takes_a_batch_rows_place_and_the_batch_row_resumes_exactly(engine):
    alone = [submit(engine, prompt, BATCH, 40)[1].result() for prompt in BATCH_PROMPTS]
    before = preempted()
    batch = [submit(engine, prompt, BATCH, 40) for prompt in BATCH_PROMPTS]
    for _, sink in batch:
        assert sink.first.wait(60)  # both rows are decoding
    _, sink = submit(engine, "What is the capital of France?", INTERACTIVE, 8)
    text, _, usage = sink.result()
    assert "Paris" in text and usage["completion_tokens"] <= 8
    assert not all(request.ended.is_set() for request, _ in batch)  # it did not wait for the batch rows
    assert preempted() == before + 2  # both made room
    assert [s.result() for _, s in batch] == alone  # token for token, usage and finish reason too


def test_a_preempted_row_that_is_cancelled_ends_cancelled(engine):
    batch = [submit(engine, prompt, BATCH, 200) for prompt in BATCH_PROMPTS]
    for _, sink in batch:
        assert sink.first.wait(60)
    interactive = [submit(engine, "Count from one to fifty.", INTERACTIVE, 60)]
    deadline = time.monotonic() + 30
    while len(engine.preempted) < 2:  # both batch rows made room
        assert time.monotonic() < deadline
        time.sleep(0.01)
    batch[0][0].cancelled.set()
    assert batch[0][1].result()[1] == "cancelled"
    for _, sink in interactive:
        assert sink.result()[1] in ("stop", "length")
    assert batch[1][1].result()[1] in ("stop", "length")
    deadline = time.monotonic() + 5  # the engine drops a finished row just after its last event
    while engine.rows and time.monotonic() < deadline:
        time.sleep(0.01)
    assert engine.preempted == [] and engine.rows == []
