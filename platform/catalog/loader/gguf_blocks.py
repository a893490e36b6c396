"""A GGUF's quantized linear layers as the file stores them: blocks of 32 weights along the input,
each with its own scale (and offset), for the runtime's decoder to read instead of float32.

A decode step reads every weight once, so a model held in float32 after dequantizing its GGUF
reads eight times the bytes its 4-bit file holds (540 MB a token for the demo model, against
81 MB), and that is where its time goes. The blocks describe the very weights the float32 model
holds: Q4_0/Q4_1 blocks decode as w = scale·q + offset with q in 0..15, Q8_0 as w = scale·q with q
in -128..127, with the file's float16 scale and offset (kept as they are: a decode step reads
them too); in float32 each product scale·q is exact, so one rounding of scale·q + offset gives the
very float32 weight.

A layer is taken only when its blocks, decoded, equal the weight the model loaded, element for
element; the check also finds the row order llama.cpp gives query and key projections. Any
other layer stays dense. What was extracted is cached beside the model's weights (reading and
checking every layer takes seconds; loading them back, a moment).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

log = logging.getLogger(__name__)

GROUP = 32
LAYOUT = "blocks-v2"
# bytes of a block: float16 scale [, float16 minimum], then the quantized weights
BLOCK_BYTES = {"Q4_0": 18, "Q4_1": 20, "Q8_0": 34}


@dataclass
class Blocks:
    """One weight [out, in] in blocks of GROUP along the input: w = scale·q + offset.

    bits 4: `q` is uint8 [out, in/32, 16], byte j of a block holding element j in its low nibble
    and element j + 16 in its high one (the file's own order); bits 8: int8 [out, in/32, 32] and
    no offset."""

    bits: int
    q: torch.Tensor
    scale: torch.Tensor  # float16 [out, in/32]
    offset: torch.Tensor | None  # float16 [out, in/32]

    @property
    def shape(self) -> tuple[int, int]:
        return self.q.shape[0], self.q.shape[1] * GROUP

    def dequantize(self) -> torch.Tensor:
        """The float32 weight [out, in], computed as the loader computes it."""
        if self.bits == 4:
            values = torch.cat([self.q & 0x0F, self.q >> 4], dim=-1).to(torch.float32)
        else:
            values = self.q.to(torch.float32)
        weight = values * self.scale.float()[..., None]
        if self.offset is not None:
            weight = weight + self.offset.float()[..., None]
        return weight.reshape(self.shape)

    def rows(self, index: torch.Tensor) -> Blocks:
        offset = self.offset[index] if self.offset is not None else None
        return Blocks(self.bits, self.q[index].contiguous(), self.scale[index].contiguous(), offset)


def concat(parts: list[Blocks]) -> Blocks:
    """Several weights with the same input stacked along the output (query, key and value)."""
    if len({p.bits for p in parts}) != 1:
        raise ValueError("blocks of different widths cannot be stacked")
    offsets = [p.offset for p in parts]
    offset = None if offsets[0] is None else torch.cat(offsets)
    return Blocks(parts[0].bits, torch.cat([p.q for p in parts]), torch.cat([p.scale for p in parts]), offset)


def _read(tensor) -> Blocks | None:
    kind = tensor.tensor_type.name
    if kind not in BLOCK_BYTES:
        return None
    k, n = (int(v) for v in tensor.shape[:2])  # ggml lists the contiguous (input) dimension first
    raw = np.asarray(tensor.data).reshape(-1).view(np.uint8).reshape(n, k // GROUP, BLOCK_BYTES[kind])
    scale = torch.from_numpy(raw[..., 0:2].copy().view(np.float16)[..., 0])
    if kind == "Q8_0":
        q = torch.from_numpy(raw[..., 2:].copy().view(np.int8))
        return Blocks(8, q, scale, None)
    q = torch.from_numpy(raw[..., -16:].copy())
    # Q4_1 stores its minimum; Q4_0 means w = scale·(q - 8), and -8·scale is exact in float16.
    offset = torch.from_numpy(raw[..., 2:4].copy().view(np.float16)[..., 0]) if kind == "Q4_1" else -8 * scale
    return Blocks(4, q, scale, offset)


def _row_orders(n: int, heads: list[int]):
    """The identity, then llama.cpp's query/key row order undone for each head count."""
    yield None
    for h in heads:
        if h and n % (2 * h) == 0:
            yield torch.arange(n).reshape(h, n // h // 2, 2).transpose(1, 2).reshape(n)


def _matching(blocks: Blocks, weight: torch.Tensor, heads: list[int]) -> Blocks | None:
    """The blocks in the row order under which they decode to `weight` exactly, or None. A model
    loaded in bfloat16 holds each float32 weight rounded once: the decoded weight, rounded so,
    must equal it (and the blocks then give the decode steps the unrounded values)."""
    if blocks.shape != tuple(weight.shape):
        return None
    decoded = blocks.dequantize().to(weight.dtype)
    reference = weight.detach()
    for order in _row_orders(reference.shape[0], heads):
        if torch.equal(decoded if order is None else decoded[order], reference):
            return blocks if order is None else blocks.rows(order)
    return None


def _linear_weights(model, gguf) -> dict[str, tuple[str, torch.Tensor]]:
    """GGUF tensor name -> (module name, weight) for the model's bias-free linear layers and head."""
    arch = next((key for key, value in gguf.MODEL_ARCH_NAMES.items() if value == model.config.model_type), None)
    if arch is None:
        return {}
    names = gguf.get_tensor_name_map(arch, model.config.num_hidden_layers)
    found = {}
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and module.bias is None and module.in_features % GROUP == 0:
            gguf_name = names.get_name(name)
            if gguf_name is not None:
                found[gguf_name + ".weight"] = (name, module.weight)
    if getattr(model.config, "tie_word_embeddings", False) and "output.weight" in found:
        found["token_embd.weight"] = found.pop("output.weight")  # a tied head is stored as the embedding
    return found


def extract(model, gguf_path: Path) -> dict[str, Blocks]:
    """Module name -> blocks, for each layer whose GGUF blocks are exactly its weight."""
    import gguf

    config = model.config
    heads = sorted({getattr(config, "num_attention_heads", 0), getattr(config, "num_key_value_heads", 0)} - {0})
    wanted = _linear_weights(model, gguf)
    found = {}
    for tensor in gguf.GGUFReader(str(gguf_path)).tensors:
        if tensor.name not in wanted or (blocks := _read(tensor)) is None:
            continue
        name, weight = wanted[tensor.name]
        matched = _matching(blocks, weight, heads)
        if matched is None:
            log.info("%s stays dense: its GGUF blocks do not decode to the weight loaded", name)
            continue
        found[name] = matched
    return found


def load(model, gguf_path: Path, weights_dir: Path | None) -> dict[str, Blocks]:
    """`extract`, kept beside the model's weights cache once made (not in it: vLLM loads every
    safetensors file it finds there)."""
    cached = weights_dir.with_name(f"{weights_dir.name}.{LAYOUT}.safetensors") if weights_dir else None
    if cached is not None and cached.is_file():
        return _load_cached(cached)
    found = extract(model, gguf_path)
    if cached is not None and found:
        _save(found, cached)
    return found


def _save(found: dict[str, Blocks], path: Path) -> None:
    from safetensors.torch import save_file

    tensors = {}
    for name, blocks in found.items():
        tensors[f"{name}.q{blocks.bits}"] = blocks.q
        tensors[f"{name}.scale"] = blocks.scale
        if blocks.offset is not None:
            tensors[f"{name}.offset"] = blocks.offset
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    save_file(tensors, str(partial), metadata={"layout": LAYOUT})
    os.replace(partial, path)  # concurrent loaders see the whole file or none


def _load_cached(path: Path) -> dict[str, Blocks]:
    from safetensors.torch import load_file

    tensors = load_file(str(path))
    found = {}
    for key, q in tensors.items():
        for bits in (4, 8):
            if key.endswith(f".q{bits}"):
                name = key.removesuffix(f".q{bits}")
                found[name] = Blocks(bits, q, tensors[f"{name}.scale"], tensors.get(f"{name}.offset"))
    return found
