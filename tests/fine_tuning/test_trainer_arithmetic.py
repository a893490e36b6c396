"""What a training step computes: attention over a packed row example by example (sliding windows
and grouped heads included), and bfloat16 products with float32 adapter, gradients and loss."""

import pytest
import torch
from django.conf import settings

from catalog.loader import dtypes, load_model
from fine_tuning.trainer import attention, precision
from fine_tuning.trainer.data import collate, encode
from tests.conftest import DEMO_SOURCE


def reference_attention(query, key, value, segments, window=None):
    """Softmax attention in float64 with an explicit mask: causal within each segment, optionally
    limited to the last `window` keys; key/value heads shared by groups of query heads."""
    q, k, v = (t.double() for t in (query, key, value))
    groups = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
    length = q.shape[2]
    allowed = torch.zeros(length, length, dtype=torch.bool)
    for start, end in segments:
        for i in range(start, end):
            for j in range(start, i + 1):
                allowed[i, j] = window is None or i - j < window
    scores = (q @ k.transpose(-1, -2)) / q.shape[-1] ** 0.5
    weights = scores.masked_fill(~allowed, float("-inf")).softmax(-1)
    return (weights @ v).transpose(1, 2)


@pytest.mark.parametrize("window", [None, 4, 50])
def test_segment_attention_equals_masked_attention_over_the_whole_row(window):
    torch.manual_seed(0)
    query, key, value = torch.randn(1, 6, 23, 8), torch.randn(1, 2, 23, 8), torch.randn(1, 2, 23, 8)
    segments = [(0, 9), (9, 10), (10, 23)]
    out, _ = attention.segment_attention(None, query, key, value, None, sliding_window=window, segments=segments)
    assert out.shape == (1, 23, 6, 8)
    assert torch.allclose(out.double(), reference_attention(query, key, value, segments, window), atol=1e-5)
    # Examples really are kept apart: the row as one sequence attends across them.
    whole, _ = attention.segment_attention(None, query, key, value, None, sliding_window=window, segments=None)
    assert not torch.allclose(whole[0, 9:], out[0, 9:], atol=1e-3)


def test_segment_attention_refuses_what_it_cannot_compute():
    q = torch.randn(1, 2, 4, 8)
    with pytest.raises(NotImplementedError, match="softcap"):
        attention.segment_attention(None, q, q, q, None, softcap=30.0, segments=[(0, 4)])


@pytest.mark.parametrize(
    ("flags", "expected"), [("avx2 avx512f", torch.float32), ("avx512f avx512_bf16", torch.bfloat16)]
)
def test_auto_precision_is_bfloat16_only_where_the_cpu_has_bf16_units(tmp_path, monkeypatch, flags, expected):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(f"processor\t: 0\nflags\t\t: fpu sse {flags}\n")
    monkeypatch.setattr(dtypes, "CPUINFO", cpuinfo)
    assert precision.resolve("auto", torch.device("cpu")) == expected
    assert precision.resolve("float32", torch.device("cpu")) == torch.float32
    with pytest.raises(ValueError, match="precision"):
        precision.resolve("float16", torch.device("cpu"))


@pytest.mark.slow
def test_a_bfloat16_step_keeps_the_adapter_in_float32_and_follows_the_float32_step():
    """The frozen linear weights go to bfloat16; the adapter, the tied embeddings, the loss and the
    gradients stay float32, and the step's loss and adapter gradients are those of float32 within
    bfloat16's rounding."""
    from peft import LoraConfig, get_peft_model

    from fine_tuning.trainer.train import _sums

    loaded = load_model(DEMO_SOURCE, settings.MODEL_CACHE_DIR)
    chats = [
        [{"role": "user", "content": "Name a colour."}, {"role": "assistant", "content": "Blue, like the sea."}],
        [{"role": "user", "content": "Count to five."}, {"role": "assistant", "content": "1, 2, 3, 4, 5."}],
    ]
    batch = collate([encode(loaded.tokenizer, chat, 512) for chat in chats], [0, 1])
    torch.manual_seed(0)
    lora = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM")
    model = get_peft_model(loaded.model, lora)
    attention.install(model)
    adapter = {name: p for name, p in model.named_parameters() if p.requires_grad}

    def step(dtype):
        model.zero_grad(set_to_none=True)
        loss, _, count = _sums(model, batch, dtype)
        (loss / count).backward()
        return loss.item() / count, torch.cat([p.grad.flatten() for p in adapter.values()])

    loss32, grads32 = step(torch.float32)
    converted = precision.prepare(model, torch.bfloat16)
    assert converted == 30 * 7  # every projection of every layer; the tied output layer stays
    assert model.get_input_embeddings().weight.dtype == torch.float32
    assert all(p.dtype == torch.float32 for p in adapter.values())
    loss16, grads16 = step(torch.bfloat16)
    assert grads16.dtype == torch.float32
    assert loss16 == pytest.approx(loss32, rel=0.02)
    assert torch.nn.functional.cosine_similarity(grads16, grads32, dim=0) > 0.98


def test_adapter_dropout_keeps_the_expected_share_unbiased_and_shares_a_mask_per_input():
    from fine_tuning.trainer.dropout import SharedDropout

    torch.manual_seed(0)
    drop = SharedDropout(0.05).train()
    x = torch.ones(400, 576, requires_grad=True)
    out = drop(x)
    kept = out != 0
    assert abs(float(kept.float().mean()) - 0.95) < 0.003
    assert float(out.mean()) == pytest.approx(1.0, abs=0.003)  # kept ones scaled by 1 / keep probability
    assert drop(x) is out  # the query, key and value layers read one tensor: one mask
    other = drop(x * 1)
    assert not torch.equal(other != 0, kept)  # another tensor: a mask of its own
    out.sum().backward()
    assert torch.equal(x.grad, out.detach())  # the gradient passes where the input did, scaled alike
    drop.eval()
    assert drop(x) is x
