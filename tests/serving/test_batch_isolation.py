"""Mixed-adapter batches: rows for adapter A, adapter B and the base model decoded together give,
row for row, the greedy output each request gives alone — whether they arrive together or join
a batch that is already decoding."""

import queue
import threading
import time

import pytest
import torch
from django.conf import settings

from catalog.loader import load_model
from serving.runtime import runners
from serving.runtime.adapters import BASE, AdapterError, AdapterManager
from serving.runtime.engine import Engine, GenerationRequest
from serving.runtime.sampling import SamplingParams
from tests.conftest import DEMO_SOURCE

pytestmark = pytest.mark.slow
PROMPTS = {BASE: "Tell me about the sea.", "alpha": "Tell me about the sea.", "beta": "Name three colours."}


class Sink:
    def __init__(self):
        self.events = queue.Queue()
        self.first = threading.Event()
        self.taken = 0

    def put(self, event):
        if event[0] == "token":
            self.first.set()
        self.events.put(event)

    def result(self, timeout=120):
        text = []
        while True:
            kind, *rest = self.events.get(timeout=timeout)
            self.taken += 1
            if kind == "token":
                text.append(rest[0])
            elif kind == "done":
                return "".join(text), rest[0], rest[1]
            else:
                raise AssertionError(rest)


def make_adapter(base, path, seed: int, targets):
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    config = LoraConfig(r=8, lora_alpha=32, target_modules=targets, init_lora_weights=False)
    peft_model = get_peft_model(base, config)
    peft_model.save_pretrained(path, safe_serialization=True)
    return peft_model.unload()  # the base model, without LoRA layers again


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    loaded = load_model(DEMO_SOURCE, settings.MODEL_CACHE_DIR)
    root = tmp_path_factory.mktemp("adapters")
    base = make_adapter(loaded.model, root / "alpha", seed=1, targets=["q_proj", "v_proj"])
    base = make_adapter(base, root / "beta", seed=2, targets=["q_proj", "k_proj", "v_proj", "o_proj"])
    manager = AdapterManager(base, root, max_loaded=2)
    manager.load("alpha", "alpha", set())
    manager.load("beta", str(root / "beta"), set())
    runner = runners.for_loaded(loaded, manager, settings.MODEL_CACHE_DIR, max_len=2048)
    engine = Engine(base, loaded.tokenizer, manager, max_batch=8, runner=runner)
    engine.start()
    yield engine
    engine.stop()


def request(engine, adapter: str, max_tokens: int = 24) -> tuple[GenerationRequest, Sink]:
    ids = engine.tokenizer.apply_chat_template(
        [{"role": "user", "content": PROMPTS[adapter]}], add_generation_prompt=True, tokenize=True, return_dict=False
    )
    sink = Sink()
    return GenerationRequest(
        list(ids), SamplingParams(max_tokens=max_tokens, temperature=0.0), sink, adapter=adapter
    ), sink


def alone(engine, adapter: str, max_tokens: int = 24):
    job, sink = request(engine, adapter, max_tokens)
    engine.submit(job)
    return sink.result()


def test_adapters_change_the_output(engine):
    outputs = {name: alone(engine, name)[0] for name in (BASE, "alpha")}
    assert outputs[BASE] != outputs["alpha"]  # same prompt, different weights: the test below can fail


def test_mixed_batch_matches_each_request_alone(engine):
    expected = {name: alone(engine, name) for name in PROMPTS}
    # Arriving together: one prefill, one batch.
    jobs = {name: request(engine, name) for name in PROMPTS}
    for job, _ in jobs.values():
        engine.submit(job)
    together = {name: sink.result() for name, (_, sink) in jobs.items()}
    assert together == expected
    # Joining a batch that is already decoding: the base row starts, the adapter rows join it.
    first, first_sink = request(engine, BASE)
    engine.submit(first)
    assert first_sink.first.wait(60)
    later = {name: request(engine, name) for name in ("alpha", "beta")}
    for job, _ in later.values():
        engine.submit(job)
    joined = {name: sink.result() for name, (_, sink) in later.items()}
    joined[BASE] = first_sink.result()
    assert joined == expected


def test_cancelled_row_stops_and_reports_what_it_generated(engine):
    job, sink = request(engine, "beta", max_tokens=400)
    engine.submit(job)
    assert sink.first.wait(60)
    job.cancelled.set()
    _, reason, usage = sink.result()
    assert reason == "cancelled"
    assert 0 < usage["completion_tokens"] < 400


def test_adapter_store_confinement_and_lru(engine, tmp_path):
    manager = engine.adapters
    with pytest.raises(AdapterError) as outside:
        manager.confine(str(tmp_path))
    assert outside.value.status == 403
    with pytest.raises(AdapterError) as escape:
        manager.confine("../../etc")
    assert escape.value.status == 403
    (manager.root / "pickled").mkdir(exist_ok=True)
    for name in ("adapter_config.json", "adapter_model.safetensors", "adapter_model.bin"):
        (manager.root / "pickled" / name).write_text("{}")
    with pytest.raises(AdapterError) as pickled:
        manager.confine("pickled")
    assert "pickled weights are never loaded" in pickled.value.message
    # Two slots, both loaded: loading a third (alpha again under a new name) evicts the least recently used.
    engine.call(lambda e: e.adapters.touch("alpha")).result(30)
    engine.call(lambda e: e.adapters.load("alpha-again", "alpha", e.in_use())).result(60)
    assert list(manager.loaded) == ["alpha", "alpha-again"]
    engine.call(lambda e: e.adapters.unload("alpha-again", e.in_use())).result(30)
    engine.call(lambda e: e.adapters.load("beta", "beta", e.in_use())).result(60)


def test_gathered_lora_equals_peft_reference(engine):
    """Our gathered LoRA forward gives PEFT's own mixed-batch logits (the reference implementation)."""
    from serving.runtime import lora_batching

    def compare(e):
        model = e.adapters.peft_model
        ids = e.tokenizer("The lighthouse keeper", return_tensors="pt")["input_ids"].repeat(3, 1)
        rows = [BASE, "alpha", "beta"]
        ours = model(input_ids=ids, adapter_names=rows).logits
        patched = [m for m in model.modules() if getattr(m, "_maas_gathered", False)]
        for module in patched:  # back to PEFT's class method
            del module._mixed_batch_forward
            module._maas_gathered = False
        try:
            reference = model(input_ids=ids, adapter_names=rows).logits
        finally:
            lora_batching.install(model, e.adapters.stacks)
        return ours, reference, len(patched)

    ours, reference, patched = engine.call(compare).result(120)
    assert patched > 0
    assert torch.allclose(ours, reference, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(ours[0], ours[1], atol=1e-2)  # the adapters do change the logits


def test_a_row_that_fails_ends_alone_and_the_batch_goes_on(engine):
    """A row whose sampling raises (a logit_bias id outside the vocabulary, which the HTTP layer
    would refuse, fed straight to the engine) gets an error; the rows decoding beside it finish
    exactly as they would alone, and the engine keeps serving."""
    expected = {name: alone(engine, name) for name in (BASE, "beta")}
    first, first_sink = request(engine, BASE)
    engine.submit(first)
    assert first_sink.first.wait(60)
    broken, broken_sink = request(engine, "alpha")
    broken.params.logit_bias = {10**9: 1.0}
    other, other_sink = request(engine, "beta")
    engine.submit(broken)
    engine.submit(other)
    kind, message, status = broken_sink.events.get(timeout=60)
    assert kind == "error" and "could not generate" in message and status == 500
    assert {BASE: first_sink.result(), "beta": other_sink.result()} == expected
    assert alone(engine, "alpha")[1] == "length"  # still serving, the failed row's adapter included


def test_a_prompt_the_engine_cannot_take_fails_its_request_not_the_step(engine):
    """Prompt ids that are not token ids (the HTTP layer tokenizes, so only a caller of the engine
    can send them) end that request with an error at once; the engine keeps serving."""
    broken, broken_sink = request(engine, BASE)
    broken.prompt_ids = ["not", "token", "ids"]
    engine.submit(broken)
    kind, *_ = broken_sink.events.get(timeout=60)
    assert kind == "error"
    assert alone(engine, BASE, max_tokens=4)[1] == "length"


def test_the_base_model_serves_after_the_last_adapter_is_unloaded(engine):
    """Unloading every adapter (an endpoint stopped) leaves the base model serving, and an adapter
    loaded again behaves as before."""
    base_before = alone(engine, BASE)[0]
    alpha_before = alone(engine, "alpha")[0]
    for name in list(engine.adapters.loaded):
        engine.call(lambda e, n=name: e.adapters.unload(n, e.in_use())).result(30)
    assert engine.adapters.peft_model is None and not engine.adapters.loaded
    assert alone(engine, BASE)[0] == base_before
    engine.call(lambda e: e.adapters.load("alpha", "alpha", e.in_use())).result(60)
    assert alone(engine, "alpha")[0] == alpha_before


class UnreadSink(Sink):
    """A reader that takes events only when told to, as a client that stops reading does."""

    def __init__(self):
        super().__init__()
        self.put_count = 0

    def put(self, event):
        self.put_count += 1
        super().put(event)

    def unread(self) -> int:
        return self.put_count - self.taken


def test_a_row_whose_reader_stalls_waits_alone_and_resumes_where_it_was(engine):
    from serving.runtime.engine import MAX_UNREAD

    expected = alone(engine, "alpha", max_tokens=48)
    stalled, stalled_sink = request(engine, "alpha", max_tokens=48)
    stalled.sink = stalled_sink = UnreadSink()
    engine.submit(stalled)
    other, other_sink = request(engine, BASE, max_tokens=48)
    engine.submit(other)
    # The other row runs to its end while the stalled one holds at the bound.
    assert other_sink.result()[1] in ("length", "stop")
    assert stalled_sink.unread() == MAX_UNREAD
    assert not stalled.ended.is_set()
    time.sleep(0.5)
    assert stalled_sink.unread() == MAX_UNREAD  # nothing more was generated for it meanwhile
    # Read again: it goes on, and the answer is the one it gives alone (the held steps left no trace).
    assert stalled_sink.result() == expected


def test_a_stalled_row_that_is_cancelled_ends_with_what_it_generated(engine):
    stalled, _ = request(engine, BASE, max_tokens=200)
    stalled.sink = sink = UnreadSink()
    engine.submit(stalled)
    deadline = time.monotonic() + 60
    while sink.unread() < 16 and time.monotonic() < deadline:
        time.sleep(0.05)
    stalled.cancelled.set()
    assert stalled.ended.wait(10)
    assert stalled.finish_reason == "cancelled"
    # Every event was a token but the last (done), and each carries the count so far.
    assert stalled.usage["completion_tokens"] >= sink.put_count - 1 > 0
