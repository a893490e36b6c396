"""The runtime's native decoder (serving/runtime/native): the GGUF's blocks are the weights the
model loaded, the block kernels compute what a dense product computes and each row alone, and the
decoder answers as transformers' forward pass does, with each row's adapter as PEFT applies it."""

import pytest
import torch
import torch.nn.functional as F
from django.conf import settings

from catalog.loader import gguf_blocks, load_model
from serving.runtime import runners
from serving.runtime.adapters import BASE, AdapterError, AdapterManager
from serving.runtime.engine import Engine, GenerationRequest
from serving.runtime.native import kernels as native_kernels
from serving.runtime.native.slots import Slots
from serving.runtime.sampling import SamplingParams
from tests.conftest import DEMO_SOURCE
from tests.serving.test_batch_isolation import Sink, make_adapter

pytestmark = pytest.mark.slow
QUESTIONS = ["What is the capital of France?", "Write a haiku about rain.", "Count from one to ten."]


@pytest.fixture(scope="module")
def loaded():
    return load_model(DEMO_SOURCE, settings.MODEL_CACHE_DIR)


@pytest.fixture(scope="module")
def kernels():
    built = native_kernels.load(settings.MODEL_CACHE_DIR)
    assert built is not None, "the block kernels must compile here (a C compiler is on every machine we run on)"
    return built


def test_every_linear_layer_is_read_from_blocks_that_decode_to_its_weight(loaded, tmp_path):
    source = loaded.source.path
    fresh = gguf_blocks.load(loaded.model, source, tmp_path / "weights")  # extracted, checked, cached
    cached = gguf_blocks.load(loaded.model, source, tmp_path / "weights")  # read back from the cache
    assert (tmp_path / f"weights.{gguf_blocks.LAYOUT}.safetensors").is_file()
    linear = {n for n, m in loaded.model.named_modules() if isinstance(m, torch.nn.Linear)}
    assert set(fresh) == set(cached) == linear  # its tied head included
    assert {blocks.bits for blocks in cached.values()} == {4, 8}  # the Q4_1 file keeps a few layers in Q8_0
    modules = dict(loaded.model.named_modules())
    for name, blocks in cached.items():
        assert torch.equal(blocks.dequantize(), modules[name].weight), name


def random_blocks(bits: int, n: int, k: int) -> gguf_blocks.Blocks:
    groups = k // gguf_blocks.GROUP
    scale = (torch.rand(n, groups) / 8).half()
    if bits == 4:
        return gguf_blocks.Blocks(4, torch.randint(0, 256, (n, groups, 16), dtype=torch.uint8), scale, -8 * scale)
    return gguf_blocks.Blocks(8, torch.randint(-128, 128, (n, groups, 32), dtype=torch.int8), scale, None)


@pytest.mark.parametrize("bits", [4, 8])
def test_block_kernels_compute_the_dense_product_and_each_row_alone(kernels, bits):
    torch.manual_seed(bits)
    blocks = random_blocks(bits, n=70, k=576)  # 70: tiles of four columns and a remainder
    x = torch.randn(5, 576)  # 5: pairs of rows and one alone
    y = kernels.matmul(blocks, x)
    reference = (x.double() @ blocks.dequantize().double().T).float()
    torch.testing.assert_close(y, reference, rtol=1e-4, atol=1e-4)
    for row in range(5):  # the same bits whatever rows share the call
        assert torch.equal(kernels.matmul(blocks, x[row : row + 1])[0], y[row])
        assert torch.equal(kernels.matmul(blocks, x[[row, (row + 1) % 5]])[0], y[row])
    residual = torch.randn(5, 70)
    assert torch.equal(kernels.matmul(blocks, x, residual.clone()), residual + y)
    # The input transformed first, as a decode step asks: RMSNorm, and SwiGLU of two halves.
    weight = torch.rand(576) + 0.5
    kept = torch.empty(5, 576)
    normed = kernels.matmul(blocks, x, first=native_kernels.Input(weight, 1e-5), kept=kept)
    torch.testing.assert_close(kept, F.rms_norm(x, (576,), weight, 1e-5), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(normed, kept @ blocks.dequantize().T, rtol=1e-4, atol=1e-3)
    halves = torch.randn(5, 2 * 576)
    activated = kernels.matmul(blocks, halves, first=native_kernels.SWIGLU_INPUT, kept=kept)
    torch.testing.assert_close(kept, F.silu(halves[:, :576]) * halves[:, 576:], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(activated, kept @ blocks.dequantize().T, rtol=1e-4, atol=1e-3)


def test_an_odd_input_width_falls_back_to_dense_weights():
    """Blocks of 32 along the input: a model whose layer is not is served from its dense weight."""
    assert gguf_blocks._matching(random_blocks(4, 8, 64), torch.zeros(8, 48), []) is None


def test_slots_of_any_widths_join_keep_their_rows():
    """A running batch and newcomers whose slots were sized apart (a prompt of 30 tokens joining a
    batch 40 wide, then one of 300) join into one batch, each row's keys where they were."""
    running, small, large = Slots(2, 1, 3, 40, 64), Slots(2, 1, 3, 30, 64), Slots(2, 2, 3, 300, 64)
    for rows, marker in ((running, 1.0), (small, 2.0), (large, 3.0)):
        rows.keys[1].fill_(marker)
        rows.lengths.fill_(rows.capacity - 1)
    running.join(small)
    running.join(large)
    assert len(running) == 4 and running.capacity == 300
    assert [float(running.keys[1][row, 0, 0, 0]) for row in range(4)] == [1.0, 2.0, 3.0, 3.0]
    assert running.lengths.tolist() == [39, 29, 299, 299]
    running.keep([2, 0])
    assert running.lengths.tolist() == [299, 39] and float(running.keys[1][1, 0, 39, 0]) == 1.0


def greedy(engine: Engine, question: str, adapter: str = BASE, max_tokens: int = 24) -> str:
    ids = engine.tokenizer.apply_chat_template(
        [{"role": "user", "content": question}], add_generation_prompt=True, tokenize=True, return_dict=False
    )
    sink = Sink()
    engine.submit(
        GenerationRequest(list(ids), SamplingParams(max_tokens=max_tokens, temperature=0.0), sink, adapter=adapter)
    )
    return sink.result()[0]


@pytest.fixture(scope="module")
def adapted(loaded, tmp_path_factory):
    root = tmp_path_factory.mktemp("adapters")
    base = make_adapter(loaded.model, root / "alpha", seed=1, targets=["q_proj", "v_proj"])
    base = make_adapter(base, root / "beta", seed=2, targets=["k_proj", "o_proj", "gate_proj", "down_proj"])
    assert base is loaded.model
    manager = AdapterManager(base, root, max_loaded=3)
    return root, manager


def engine_with(loaded, manager, decoder: str) -> Engine:
    runner = runners.for_loaded(loaded, manager, settings.MODEL_CACHE_DIR, max_len=2048, decoder=decoder)
    assert runner.name == ("transformers" if decoder == "transformers" else "native")
    engine = Engine(loaded.model, loaded.tokenizer, manager, max_batch=8, runner=runner)
    engine.start()
    return engine


def test_the_native_decoder_answers_as_transformers_does(loaded, adapted):
    _, manager = adapted
    native, reference = engine_with(loaded, manager, "auto"), engine_with(loaded, manager, "transformers")
    try:
        assert "from weight blocks" in native.runner.describe()
        native.call(lambda e: e.adapters.load("alpha", "alpha", e.in_use())).result(60)
        for question in QUESTIONS:
            assert greedy(native, question) == greedy(reference, question), question
        assert greedy(native, QUESTIONS[0], "alpha") == greedy(reference, QUESTIONS[0], "alpha")
    finally:
        native.stop()
        reference.stop()


@pytest.mark.parametrize("kernels", ["compiled", "none"])
def test_each_rows_adapter_gives_pefts_logits_in_prefill_and_decode(loaded, adapted, kernels):
    """With the compiled kernels (the fused step), and without them (no C compiler: PyTorch)."""
    _, manager = adapted
    for name in ("alpha", "beta"):
        if name not in manager.loaded:
            manager.load(name, name, set())
    if kernels == "compiled":
        runner = runners.for_loaded(loaded, manager, settings.MODEL_CACHE_DIR, max_len=2048)
        assert runner.decoder.fused
    else:
        runner = runners.build(loaded.model, manager, max_len=2048, pad_id=0, decoder="native")
        assert not runner.decoder.fused and runner.decoder.block_layers == 0
    rows = [BASE, "alpha", "beta", "alpha"]
    prompts = [loaded.tokenizer(q)["input_ids"] for q in ["The sea", "The lighthouse keeper", "Rain", "Once upon"]]
    with torch.no_grad():
        logits, slots = runner.prefill(prompts, rows, [None] * 4)
        nxt = logits.argmax(-1)
        stepped = runner.decode(slots, nxt.tolist(), [True] * 4, rows)
        for i, (prompt, adapter) in enumerate(zip(prompts, rows, strict=True)):
            ids = torch.tensor([[*prompt, int(nxt[i])]])
            reference = manager.peft_model(input_ids=ids, adapter_names=[adapter]).logits[0]
            torch.testing.assert_close(logits[i], reference[-2], rtol=1e-3, atol=2e-3)
            torch.testing.assert_close(stepped[i], reference[-1], rtol=1e-3, atol=2e-3)
    assert not torch.allclose(logits[1], logits[2], atol=1e-2)  # the adapters do change the logits


def test_an_adapter_the_native_decoder_cannot_apply_is_refused_at_load(loaded, adapted, tmp_path):
    """A DoRA adapter (a LoRA variant the decoder does not compute) fails its load with a 400
    that says why; it is not served wrong, and the adapters loaded before it stay."""
    from peft import LoraConfig, get_peft_model

    root, manager = adapted
    config = LoraConfig(r=4, target_modules=["q_proj"], use_dora=True, init_lora_weights=False)
    dora = get_peft_model(loaded.model, config)
    dora.save_pretrained(root / "dora", safe_serialization=True)
    assert dora.unload() is loaded.model
    engine = engine_with(loaded, manager, "auto")
    try:
        before = list(manager.loaded)
        with pytest.raises(AdapterError) as refused:
            engine.call(lambda e: e.adapters.load("dora", "dora", e.in_use())).result(60)
        assert refused.value.status == 400 and "dora" in str(refused.value)
        assert list(manager.loaded) == before
        assert greedy(engine, QUESTIONS[0], max_tokens=4)
    finally:
        engine.stop()
