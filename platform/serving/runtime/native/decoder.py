"""The runtime's own forward pass for Llama-family models (Llama, Mistral, Qwen2 and their kin),
over the batch's keys and values, with each row's LoRA adapter.

Why not transformers' forward: at one stream a decode step of the demo model spent 64 ms there,
52 of them in matrix products reading 540 MB of float32 weights at 10 GB/s and most of the rest
in per-layer Python. Here a decode step is a few fused operations per layer, and its matrix
products read the GGUF's own blocks (kernels.py), 81 MB for the same weights, decoded exactly.

Rows are right-aligned in the cache: row b's keys and values fill columns [0, length_b), so a
row's arithmetic never depends on how long the other rows are (padding sits after its keys,
masked, where it adds exact zeros), and the block kernels compute each row alone. A prompt is
computed once (a prefill, with the dense weights, as one packed sequence of every newcomer's
tokens); then one token per row and step.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from serving.runtime.native.kernels import PLAIN, SWIGLU_INPUT, Input
from serving.runtime.native.lora import LoraPlan
from serving.runtime.native.slots import Slots

SUPPORTED_TYPES = ("llama", "mistral", "qwen2")
STATIC_ROPE = ("default", "linear", "llama3", "yarn")


def unsupported(config) -> str | None:
    """Why this decoder cannot run a model of this configuration, or None if it can."""
    if config.model_type not in SUPPORTED_TYPES:
        return f"model type {config.model_type!r}"
    rope = (getattr(config, "rope_parameters", None) or {}).get("rope_type", "default")
    if rope not in STATIC_ROPE:
        return f"rope type {rope!r}"
    if getattr(config, "hidden_act", "silu") != "silu":
        return f"activation {config.hidden_act!r}"
    window = getattr(config, "sliding_window", None)
    if window is not None and getattr(config, "use_sliding_window", True) and window < config.max_position_embeddings:
        return "sliding-window attention"
    if getattr(config, "mlp_bias", False):
        return "biased MLP"
    return None


class Projection:
    """Several linear layers sharing one input (query, key and value; gate and up), computed as one:
    from the blocks in a decode step when every part has them, else from the dense weights."""

    def __init__(self, names: list[str], modules: list, blocks: dict, kernels):
        self.names = names
        self.weights = [module.weight.detach() for module in modules]
        biases = [module.bias for module in modules]
        self.bias = torch.cat([b.detach().float() for b in biases]) if any(b is not None for b in biases) else None
        self.sizes = [w.shape[0] for w in self.weights]
        self.kernels = kernels
        self.blocks = None
        if kernels is not None and all(name in blocks for name in names):
            from catalog.loader.gguf_blocks import concat

            self.blocks = concat([blocks[name] for name in names]) if len(names) > 1 else blocks[names[0]]

    def dense(self, x: torch.Tensor) -> torch.Tensor:
        parts = [F.linear(x.to(w.dtype), w).float() for w in self.weights]
        y = parts[0] if len(parts) == 1 else torch.cat(parts, dim=-1)
        return y if self.bias is None else y + self.bias

    def __call__(
        self,
        x: torch.Tensor,
        *,
        decode: bool,
        out: torch.Tensor | None = None,
        first: Input = PLAIN,
        kept: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """first(x)·Wᵀ (+ bias); with `out`, added into it (a residual). `kept` receives first(x)."""
        if decode and self.blocks is not None:
            if self.bias is not None and out is not None:
                out += self.bias
            y = self.kernels.matmul(self.blocks, x, out, first, kept)
            return y if self.bias is None or out is not None else y + self.bias
        x = first(x)
        if kept is not None:
            kept.copy_(x)
        y = self.dense(x)
        return y if out is None else out.add_(y)


@dataclass
class _Layer:
    qkv: Projection
    o: Projection
    gate_up: Projection
    down: Projection
    attention_input: Input  # RMSNorm before attention
    mlp_input: Input  # RMSNorm before the MLP


class LlamaDecoder:
    def __init__(self, model, blocks: dict, kernels, max_len: int):
        config = model.config
        inner = model.model
        self.heads = config.num_attention_heads
        self.kv_heads = config.num_key_value_heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // self.heads
        self.hidden = config.hidden_size
        self.eps = config.rms_norm_eps
        self.layers = []
        for i, layer in enumerate(inner.layers):

            def projection(parent: str, names: list[str], layer=layer, i=i) -> Projection:
                modules = [getattr(getattr(layer, parent), name) for name in names]
                return Projection([f"model.layers.{i}.{parent}.{n}" for n in names], modules, blocks, kernels)

            self.layers.append(
                _Layer(
                    qkv=projection("self_attn", ["q_proj", "k_proj", "v_proj"]),
                    o=projection("self_attn", ["o_proj"]),
                    gate_up=projection("mlp", ["gate_proj", "up_proj"]),
                    down=projection("mlp", ["down_proj"]),
                    attention_input=Input(layer.input_layernorm.weight.detach().float(), self.eps),
                    mlp_input=Input(layer.post_attention_layernorm.weight.detach().float(), self.eps),
                )
            )
        self.final_input = Input(inner.norm.weight.detach().float(), self.eps)
        self.embedding = inner.embed_tokens.weight.detach()
        self.head = Projection(["lm_head"], [model.get_output_embeddings()], blocks, kernels)
        positions = torch.arange(max_len)[None]
        cos, sin = inner.rotary_emb(torch.zeros(1, dtype=torch.float32), positions)
        half = self.head_dim // 2
        self.cos = cos[0].float().contiguous()
        # rotate_half(x)·sin == roll(x, half)·sin with the first half of sin negated
        self.sin = torch.cat([-sin[0, :, :half], sin[0, :, half:]], dim=-1).float().contiguous()
        self.kernels = kernels
        # The fused decode step needs the kernels, and head vectors the attention kernel reads 16 lanes at a time.
        self.fused = kernels is not None and self.head_dim % 16 == 0
        self.block_layers = sum(p.blocks is not None for layer in self.layers for p in self._projections(layer))

    @staticmethod
    def _projections(layer: _Layer) -> tuple[Projection, ...]:
        return layer.qkv, layer.o, layer.gate_up, layer.down

    def new_slots(self, rows: int, capacity: int) -> Slots:
        return Slots(len(self.layers), rows, self.kv_heads, capacity, self.head_dim)

    def _rope(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """x [tokens, heads, head_dim] rotated to each token's position."""
        cos, sin = self.cos[positions][:, None], self.sin[positions][:, None]
        return torch.addcmul(x * cos, torch.roll(x, self.head_dim // 2, dims=-1), sin)

    def _layer_qkv(self, layer: _Layer, h, positions, lora: LoraPlan | None, index: int, decode: bool, slots, rows):
        """The layer's queries; its keys and values go into the rows' slots at their positions."""
        x = layer.attention_input(h)
        qkv = layer.qkv(x, decode=decode)
        if lora is not None:
            lora.add(index, "qkv", x, qkv)
        tokens = qkv.shape[0]
        q_and_k = (self.heads + self.kv_heads) * self.head_dim
        rotated = self._rope(qkv[:, :q_and_k].view(tokens, self.heads + self.kv_heads, self.head_dim), positions)
        q, k = rotated.split([self.heads, self.kv_heads], dim=1)
        v = qkv[:, q_and_k:].view(tokens, self.kv_heads, self.head_dim)
        keys, values = slots.keys[index], slots.values[index]
        keys[rows, :, positions] = k
        values[rows, :, positions] = v
        return q, keys, values

    def _layer_rest(self, layer: _Layer, h, attended, lora: LoraPlan | None, index: int, decode: bool) -> None:
        """The attention's output projection and the MLP, each added into the residual h."""
        layer.o(attended, decode=decode, out=h)
        if lora is not None:
            lora.add(index, "o", attended, h)
        x = layer.mlp_input(h)
        gate_up = layer.gate_up(x, decode=decode)
        if lora is not None:
            lora.add(index, "gate_up", x, gate_up)
        gate, up = gate_up.chunk(2, dim=-1)
        activated = F.silu(gate).mul_(up)
        layer.down(activated, decode=decode, out=h)
        if lora is not None:
            lora.add(index, "down", activated, h)

    def decode(self, slots: Slots, tokens: torch.Tensor, advance: torch.Tensor, lora: LoraPlan | None) -> torch.Tensor:
        """One token for every row: logits [rows, vocab]. Rows with `advance` False (their reader is
        behind) are computed but keep their length, so the token goes in again next time."""
        positions = slots.lengths
        longest = int(positions.max())
        if longest >= len(self.cos):
            raise ValueError(f"position {longest} is beyond the model's context of {len(self.cos)} tokens")
        slots.reserve(longest + 1)
        h = self.embedding[tokens].float()
        if not self.fused:
            rows = torch.arange(len(positions))
            mask = (torch.arange(longest + 1)[None] <= positions[:, None])[:, None, None, :]
        for index, layer in enumerate(self.layers):
            if self.fused:
                self._fused_layer(layer, h, positions, lora, index, slots)
                continue
            q, keys, values = self._layer_qkv(layer, h, positions, lora, index, True, slots, rows)
            attended = F.scaled_dot_product_attention(
                q[:, :, None], keys[:, :, : longest + 1], values[:, :, : longest + 1], attn_mask=mask, enable_gqa=True
            )
            self._layer_rest(layer, h, attended.reshape(len(rows), -1), lora, index, decode=True)
        slots.lengths = positions + advance.to(positions.dtype)
        return self.head(h, decode=True, first=self.final_input)

    def _fused_layer(self, layer: _Layer, h, positions, lora: LoraPlan | None, index: int, slots: Slots) -> None:
        """A decode step's layer in five kernel calls (norm and projection fused, the whole attention
        in one, SwiGLU read by the down projection); an adapter reads the inputs the weights read."""
        rows = h.shape[0]
        staged = torch.empty((rows, self.hidden)) if lora is not None else None
        qkv = layer.qkv(h, decode=True, first=layer.attention_input, kept=staged)
        if lora is not None:
            lora.add(index, "qkv", staged, qkv)
        keys, values = slots.keys[index], slots.values[index]
        attended = self.kernels.attend(qkv, positions, self.cos, self.sin, keys, values, self.heads, self.kv_heads)
        layer.o(attended, decode=True, out=h)
        if lora is not None:
            lora.add(index, "o", attended, h)
        gate_up = layer.gate_up(h, decode=True, first=layer.mlp_input, kept=staged)
        if lora is not None:
            lora.add(index, "gate_up", staged, gate_up)
        activated = torch.empty((rows, gate_up.shape[1] // 2)) if lora is not None else None
        layer.down(gate_up, decode=True, out=h, first=SWIGLU_INPUT, kept=activated)
        if lora is not None:
            lora.add(index, "down", activated, h)

    def prefill(self, slots: Slots, sequences: list[list[int]], lora: LoraPlan | None) -> torch.Tensor:
        """Each row's tokens appended after what its slot holds already (a cached prefix, or
        nothing): the rows' tokens go through the layers as one packed sequence, each attending
        to its own row. Returns the logits after each row's last token [rows, vocab]."""
        counts = [len(s) for s in sequences]
        starts = slots.lengths.tolist()
        slots.reserve(max(s + n for s, n in zip(starts, counts, strict=True)))
        tokens = torch.tensor([t for s in sequences for t in s], dtype=torch.long)
        row_of = torch.repeat_interleave(torch.arange(len(counts)), torch.tensor(counts))
        positions = torch.cat([torch.arange(s, s + n) for s, n in zip(starts, counts, strict=True)])
        ends = torch.tensor(counts).cumsum(0)
        h = self.embedding[tokens].float()
        for index, layer in enumerate(self.layers):
            q, keys, values = self._layer_qkv(layer, h, positions, lora, index, False, slots, row_of)
            attended = torch.empty(len(tokens), self.heads, self.head_dim)
            for row, (start, count) in enumerate(zip(starts, counts, strict=True)):
                first = int(ends[row]) - count
                query = q[first : first + count].transpose(0, 1)[None]
                total = start + count
                # Causal over the row's whole sequence, the cached prefix included.
                causal = torch.ones(count, total, dtype=torch.bool).tril(diagonal=start)
                out = F.scaled_dot_product_attention(
                    query, keys[row : row + 1, :, :total], values[row : row + 1, :, :total],
                    attn_mask=causal, enable_gqa=True,
                )  # fmt: skip
                attended[first : first + count] = out[0].transpose(0, 1)
            self._layer_rest(layer, h, attended.reshape(len(tokens), -1), lora, index, decode=False)
        slots.lengths = torch.tensor([s + n for s, n in zip(starts, counts, strict=True)])
        last = self.final_input(h[ends - 1])
        return self.head(last, decode=True)
