"""The demo model's 4-bit layers served in 4 bits (the runtime's --quantization int4): every Q4_1
layer is replaced and holds the weight float32 loaded, the model predicts what float32 predicts
as often as a bfloat16 model does, LoRA adapters wrap the layers, a runtime serves chat from it,
and the packed layers come back from the model cache."""

import pytest
import torch
from django.conf import settings
from peft import LoraConfig, get_peft_model

from catalog.loader import int4, load_model
from catalog.loader.dtypes import resolve_quantization
from catalog.loader.int4 import GROUP, HalfHead, Int4Linear
from tests.conftest import DEMO_SOURCE

pytestmark = pytest.mark.slow
TEXT = (
    "The lighthouse keeper climbed the stairs every evening to light the lamp. Ships passed in the "
    "night, and the beam swept across the water until the sun rose over the cliffs again. In winter "
    "the storms came from the north, and the keeper wrote in his logbook the names of the vessels "
    "that sheltered in the bay: fishing boats, a mail steamer, once a schooner with torn sails. "
    "Python is a programming language that lets you work quickly and integrate systems effectively. "
    "To install a package, run pip install followed by its name; a virtual environment keeps each "
    "project's dependencies apart. The capital of France is Paris, and the capital of Japan is Tokyo. "
    "Water boils at one hundred degrees Celsius at sea level, and light travels faster than sound."
)


@pytest.fixture(scope="module")
def models():
    full = load_model(DEMO_SOURCE, settings.MODEL_CACHE_DIR, quantization="none")
    packed = load_model(DEMO_SOURCE, settings.MODEL_CACHE_DIR, quantization="int4")
    return full, packed


def layers(model) -> dict[str, torch.nn.Module]:
    return {name: m for name, m in model.named_modules() if isinstance(m, (torch.nn.Linear, HalfHead))}


def test_every_4bit_layer_is_served_in_4bits_and_holds_the_float32_weight(models):
    full, packed = models
    int4 = {name: m for name, m in layers(packed.model).items() if isinstance(m, Int4Linear)}
    config = full.model.config
    assert len(int4) == 7 * config.num_hidden_layers  # q k v o gate up down, in every layer
    assert isinstance(packed.model.get_output_embeddings(), HalfHead)
    # The input embedding stays float32 (it was tied to the head): a lookup reads one row.
    assert packed.model.get_input_embeddings().weight.dtype == torch.float32
    reference = dict(full.model.named_modules())
    for name in ("model.layers.0.self_attn.q_proj", "model.layers.7.self_attn.k_proj", "model.layers.29.mlp.down_proj"):
        weight = reference[name].weight.detach()
        # The identity through the layer reads its weight back (bf16 activations hold 0/1 exactly).
        eye = torch.eye(weight.shape[1])
        decoded = int4[name](eye).T
        scale = weight.reshape(weight.shape[0], -1, GROUP).abs().amax(-1).repeat_interleave(GROUP, 1)
        # Exact up to the scale and zero kept in 16 bits: well under a quantization step (scale/7.5).
        assert ((decoded - weight).abs() <= scale / 64 + 1e-6).all(), name


def test_the_packed_model_predicts_what_float32_predicts(models):
    full, packed = models
    ids = full.tokenizer(TEXT, return_tensors="pt").input_ids
    halves = load_model(DEMO_SOURCE, settings.MODEL_CACHE_DIR, dtype="bfloat16").model
    with torch.inference_mode():
        a, b = full.model(ids).logits[0], packed.model(ids).logits[0]
        c = halves(ids).logits[0].float()
    agree = (a.argmax(-1) == b.argmax(-1)).float().mean().item()
    # Where two tokens are all but tied, 16-bit activations can swap them: no more often than a
    # model held wholly in bfloat16 does.
    bfloat16_agrees = (a.argmax(-1) == c.argmax(-1)).float().mean().item()
    assert agree >= 0.95 and agree >= bfloat16_agrees - 0.01, (agree, bfloat16_agrees)
    assert torch.allclose(a.softmax(-1), b.softmax(-1), atol=0.03)


def test_lora_adapters_wrap_the_4bit_layers(models):
    full, packed = models
    outputs = []
    for loaded in (full, packed):
        torch.manual_seed(7)
        config = LoraConfig(r=8, lora_alpha=32, target_modules="all-linear", init_lora_weights=False)
        model = get_peft_model(loaded.model, config)
        ids = loaded.tokenizer(TEXT, return_tensors="pt").input_ids
        with torch.inference_mode():
            with_adapter = model(ids).logits[0]
            with model.disable_adapter():
                without = model(ids).logits[0]
        outputs.append((with_adapter, without))
        loaded.model = model.unload()
    (full_with, _), (packed_with, packed_without) = outputs
    assert not torch.allclose(packed_with, packed_without, atol=1e-2)  # the adapter takes part
    # The same adapter on either base moves the predictions the same way.
    agree = (full_with.argmax(-1) == packed_with.argmax(-1)).float().mean().item()
    assert agree >= 0.9, agree
    assert isinstance(packed.model.get_submodule("model.layers.0.mlp.up_proj"), Int4Linear)


def test_the_engine_serves_a_mixed_batch_of_base_and_adapter_rows_from_4bit_layers(models, tmp_path):
    from serving.runtime.adapters import BASE, AdapterManager
    from serving.runtime.engine import Engine, GenerationRequest
    from serving.runtime.sampling import SamplingParams
    from tests.serving.test_batch_isolation import Sink, make_adapter

    _, packed = models
    base = make_adapter(packed.model, tmp_path / "tuned", seed=3, targets=["q_proj", "v_proj", "down_proj"])
    manager = AdapterManager(base, tmp_path, max_loaded=1)
    manager.load("tuned", "tuned", set())
    engine = Engine(base, packed.tokenizer, manager, max_batch=4)
    engine.start()
    try:
        ids = packed.tokenizer.apply_chat_template(
            [{"role": "user", "content": "What is the capital of France?"}],
            add_generation_prompt=True,
            tokenize=True,
            return_dict=False,
        )
        sinks = {}
        for adapter in (BASE, "tuned"):
            sinks[adapter] = Sink()
            params = SamplingParams(max_tokens=12, temperature=0.0)
            engine.submit(GenerationRequest(list(ids), params, sinks[adapter], adapter=adapter))
        answers = {adapter: sink.result() for adapter, sink in sinks.items()}
    finally:
        engine.stop()
        packed.model = manager.model if manager.peft_model is None else manager.peft_model.unload()
    assert "Paris" in answers[BASE][0]
    assert answers["tuned"][0] != answers[BASE][0]  # the adapter's layers wrap the 4-bit ones
    assert all(answer[2]["completion_tokens"] >= 1 for answer in answers.values())


def test_the_packed_layers_come_back_from_the_model_cache(models, tmp_path):
    full, packed = models
    again = load_model(DEMO_SOURCE, settings.MODEL_CACHE_DIR, quantization="int4")
    ids = packed.tokenizer(TEXT, return_tensors="pt").input_ids
    with torch.inference_mode():
        assert torch.equal(again.model(ids).logits, packed.model(ids).logits)
    # The packed file is read instead of the GGUF: a float32 model quantizes with no GGUF at hand.
    fresh = load_model(DEMO_SOURCE, settings.MODEL_CACHE_DIR, quantization="none").model
    assert int4.quantize(fresh, tmp_path / "no-such.gguf", full.weights_dir) == 7 * fresh.config.num_hidden_layers
    with torch.inference_mode():
        assert torch.equal(fresh(ids).logits, packed.model(ids).logits)


def test_auto_picks_4bit_only_where_it_holds_the_files_own_values():
    assert resolve_quantization("auto", source_format="gguf", dtype="float32", device="cpu") == "int4"
    assert resolve_quantization("auto", source_format="gguf", dtype="bfloat16", device="cpu") == "none"
    assert resolve_quantization("auto", source_format="safetensors", dtype="float32", device="cpu") == "none"
    assert resolve_quantization("auto", source_format="gguf", dtype="float32", device="cuda") == "none"
    with pytest.raises(ValueError, match="quantization must be one of"):
        resolve_quantization("int3", source_format="gguf", dtype="float32", device="cpu")
