"""A GGUF's 4-bit linear layers served in 4 bits, as the file stores them (--quantization int4).

A decode step reads every weight once, so a model held in float32 after dequantizing its GGUF
reads eight times the bytes the file holds, and spends its time there (llama.cpp reads the 4-bit
blocks). Q4_0 and Q4_1 keep blocks of 32 weights along the input dimension, each with a scale
(and for Q4_1 a minimum): w = d·q + m, q in 0..15. PyTorch's CPU int4 matmul takes groups of 32
with w = (q - 8)·scale + zero, which holds every such block (scale = d, zero = m + 8d). Its fast
path computes in bfloat16: the activations entering a layer, its scales and its output are
rounded to 8 significant bits, and the output head (8-bit blocks in the file, which the kernel
cannot hold) is kept in bfloat16 too. On the demo model the engine alone decodes one stream at
1.9x float32 on an AVX2 CPU; through the server, 1.17x at one stream and 0.85x at eight.

It is an operator's choice, not the default, for the reason bfloat16 is (catalog.loader.dtypes):
the kernel computes each row alone, but float32 attention differs in its last bits with the
padding a batch brings, and a 16-bit rounding turns that into another greedy token at near ties
(10 of 16 chat answers changed between alone and batched, against none in float32).

A layer is replaced only when its blocks, decoded, equal the weight the model loaded, element for
element (the check also finds the row order llama.cpp gives query and key projections); any
other layer, and any layer the kernel cannot take, stays as it was. Replaced layers remain
`torch.nn.Linear` to PEFT, so LoRA adapters wrap them as before; they have no gradient, so only
the runtime serves from them, never the trainer.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import torch

log = logging.getLogger(__name__)

GROUP = 32
BLOCK_BYTES = {"Q4_0": 18, "Q4_1": 20}  # fp16 scale [, fp16 minimum], 16 bytes of nibbles
INNER_K_TILES = 2
ACTIVATION = torch.bfloat16  # the kernel's fast path; the residual stream stays in the model's type


class HalfHead(torch.nn.Linear):
    """The output head in bfloat16: at 49,152 tokens by 576 it is the largest single read of a step
    of the demo model (113 MB in float32). Its GGUF blocks are 8-bit, which the int4 kernel cannot
    hold; in bfloat16 each weight keeps 8 significant bits, as the int4 layers' scales do."""

    def __init__(self, weight: torch.Tensor):
        torch.nn.Module.__init__(self)
        self.out_features, self.in_features = weight.shape
        self.weight = torch.nn.Parameter(weight.detach().to(ACTIVATION), requires_grad=False)
        self.bias = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.linear(x.to(ACTIVATION), self.weight).to(x.dtype)


class Int4Linear(torch.nn.Linear):
    """y = x·Wᵀ with W held as packed 4-bit groups of 32 along the input."""

    def __init__(self, packed: torch.Tensor, scales_and_zeros: torch.Tensor, in_features: int, out_features: int):
        torch.nn.Module.__init__(self)
        self.in_features, self.out_features = in_features, out_features
        # PEFT and the gathered LoRA read the base weight's dtype and device only.
        self.weight = torch.nn.Parameter(torch.empty(0), requires_grad=False)
        self.bias = None
        self.register_buffer("packed", packed, persistent=False)
        self.register_buffer("scales_and_zeros", scales_and_zeros, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, self.in_features).to(ACTIVATION)
        y = torch.ops.aten._weight_int4pack_mm_for_cpu(flat, self.packed, GROUP, self.scales_and_zeros)
        return y.reshape(*x.shape[:-1], self.out_features).to(x.dtype)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int4 groups of {GROUP}"


def _blocks(tensor) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """(q [N, K] in 0..15, scale [N, K/32], zero [N, K/32]) with w = (q - 8)·scale + zero."""
    kind = tensor.tensor_type.name
    if kind not in BLOCK_BYTES:
        return None
    k, n = (int(v) for v in tensor.shape[:2])  # ggml lists the contiguous (input) dimension first
    raw = np.asarray(tensor.data).reshape(-1).view(np.uint8).reshape(-1, BLOCK_BYTES[kind])
    d = raw[:, 0:2].copy().view(np.float16).astype(np.float32).reshape(n, k // GROUP)
    nibbles = raw[:, -16:]
    q = np.concatenate([nibbles & 0x0F, nibbles >> 4], axis=1).reshape(n, k)  # low nibbles first
    if kind == "Q4_1":
        zero = raw[:, 2:4].copy().view(np.float16).astype(np.float32).reshape(n, k // GROUP) + 8 * d
    else:
        zero = np.zeros_like(d)
    return q, d, zero


def _dequantized(q: np.ndarray, scale: np.ndarray, zero: np.ndarray) -> torch.Tensor:
    s = torch.from_numpy(scale).repeat_interleave(GROUP, 1)
    z = torch.from_numpy(zero).repeat_interleave(GROUP, 1)
    return (torch.from_numpy(q.astype(np.float32)) - 8) * s + z


def _row_orders(n: int, heads: list[int]):
    """The identity, then llama.cpp's query/key row order undone for each head count."""
    yield None
    for h in heads:
        if h and n % (2 * h) == 0:
            yield torch.arange(n).reshape(h, n // h // 2, 2).transpose(1, 2).reshape(n)


def _match(weight: torch.Tensor, q, scale, zero, heads: list[int]):
    """The row order under which the blocks decode to `weight` exactly, or False."""
    w = weight.detach().float()
    decoded = _dequantized(q, scale, zero)
    for order in _row_orders(w.shape[0], heads):
        if torch.equal(decoded if order is None else decoded[order], w):
            return order
    return False


def _gguf_names(model, gguf) -> dict[str, tuple[str, torch.nn.Linear]]:
    """GGUF tensor name -> (module name, module) for the model's plain linear layers."""
    arch = next((key for key, value in gguf.MODEL_ARCH_NAMES.items() if value == model.config.model_type), None)
    if arch is None:
        return {}
    names = gguf.get_tensor_name_map(arch, model.config.num_hidden_layers)
    found = {}
    for name, module in model.named_modules():
        if type(module) is torch.nn.Linear and module.bias is None and module.in_features % GROUP == 0:
            gguf_name = names.get_name(name)
            if gguf_name is not None:
                found[gguf_name + ".weight"] = (name, module)
    return found


def quantize(model, gguf_path: Path, cache_dir: Path | None) -> int:
    """Serve the GGUF's 4-bit layers in 4 bits. The packed layers are kept beside `cache_dir` (the
    model's weights cache) once made: reading the GGUF and checking every layer takes seconds,
    loading them back a moment."""
    # Beside the weights' directory, not in it: vLLM loads every safetensors file it finds there.
    layout = f"int4-torch{torch.__version__.split('+')[0]}-k{INNER_K_TILES}"
    cached = cache_dir.with_name(f"{cache_dir.name}.{layout}.safetensors") if cache_dir else None
    if cached is not None and cached.is_file():
        replaced = _load_packed(model, cached)
    else:
        replaced = quantize_from_gguf(model, gguf_path)
        if cached is not None and replaced:
            _save_packed(model, cached)
    _half_head(model, replaced)
    log.info("%d linear layers served from the GGUF's 4-bit blocks", replaced)
    return replaced


def _save_packed(model, path: Path) -> None:
    from safetensors.torch import save_file

    tensors = {}
    for name, module in model.named_modules():
        if isinstance(module, Int4Linear):
            tensors[f"{name}.packed"] = module.packed
            tensors[f"{name}.scales_and_zeros"] = module.scales_and_zeros
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    save_file(tensors, str(partial), metadata={"layout": "int4pack_for_cpu"})
    os.replace(partial, path)  # concurrent loaders see the whole file or none


def _load_packed(model, path: Path) -> int:
    from safetensors.torch import load_file

    tensors = load_file(str(path))
    replaced = 0
    for key, packed in tensors.items():
        if not key.endswith(".packed"):
            continue
        name = key.removesuffix(".packed")
        module = model.get_submodule(name)
        scales_and_zeros = tensors[f"{name}.scales_and_zeros"]
        model.set_submodule(name, Int4Linear(packed, scales_and_zeros, module.in_features, module.out_features))
        replaced += 1
    return replaced


def _half_head(model, replaced: int) -> None:
    head = model.get_output_embeddings() if replaced else None
    if type(head) is torch.nn.Linear and head.bias is None and head.weight.dtype == torch.float32:
        model.set_output_embeddings(HalfHead(head.weight))  # untied: the input embedding stays as it was
        model.config.tie_word_embeddings = False


def quantize_from_gguf(model, gguf_path: Path) -> int:
    """Replace each linear layer whose weight the GGUF holds in 4-bit blocks; returns how many."""
    import gguf

    modules = _gguf_names(model, gguf)
    config = model.config
    heads = sorted({getattr(config, "num_attention_heads", 0), getattr(config, "num_key_value_heads", 0)} - {0})
    replaced = 0
    for tensor in gguf.GGUFReader(str(gguf_path)).tensors:
        if tensor.name not in modules or (blocks := _blocks(tensor)) is None:
            continue
        name, module = modules[tensor.name]
        q, scale, zero = blocks
        if q.shape != tuple(module.weight.shape):
            continue
        order = _match(module.weight, q, scale, zero, heads)
        if order is False:
            log.info("%s stays unquantized: its GGUF blocks do not decode to the weight loaded", name)
            continue
        if order is not None:
            q, scale, zero = q[order.numpy()], scale[order.numpy()], zero[order.numpy()]
        layer = _int4_layer(q, scale, zero)
        if layer is not None:
            model.set_submodule(name, layer)
            replaced += 1
    return replaced


def _int4_layer(q: np.ndarray, scale: np.ndarray, zero: np.ndarray) -> Int4Linear | None:
    n, k = q.shape
    try:
        packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(torch.from_numpy(q.astype(np.int32)), INNER_K_TILES)
    except RuntimeError as error:  # a shape the kernel does not take: the layer stays as it was
        log.info("a %dx%d layer stays unquantized: %s", n, k, error)
        return None
    scales_and_zeros = torch.stack([torch.from_numpy(scale).T, torch.from_numpy(zero).T], dim=-1).to(ACTIVATION)
    return Int4Linear(packed, scales_and_zeros.contiguous(), k, n)
