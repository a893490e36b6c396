"""Each row's LoRA adapter in the native decoder: y += scale · (x·Aᵀ)·Bᵀ for the rows of an adapter.

Every loaded adapter's A and B are stacked per linear layer (slot 0: zeros, for base-model rows
and adapters that leave the layer alone), as in `serving.runtime.lora_batching`; a decode step
gathers each row's pair and runs two batched products, whatever the number of adapters, and a
prefill computes each adapter's tokens together. Rows without an adapter add exactly nothing.
"""

from __future__ import annotations

import torch

from serving.runtime.lora_batching import stack

# the decoder's fused projections and the model's linear layers they hold, in output order
PARTS = {
    "qkv": ("self_attn", ("q_proj", "k_proj", "v_proj")),
    "o": ("self_attn", ("o_proj",)),
    "gate_up": ("mlp", ("gate_proj", "up_proj")),
    "down": ("mlp", ("down_proj",)),
}
TARGETS = {name for _, names in PARTS.values() for name in names}


def unsupported_modules(peft_model, adapter: str) -> list[str]:
    """The adapter's LoRA layers the native decoder cannot apply: outside the attention and MLP
    projections, or with a LoRA variant (DoRA and the like)."""
    from peft.tuners.lora.layer import LoraLayer

    found = []
    for name, module in peft_model.named_modules():
        if not (isinstance(module, LoraLayer) and adapter in module.lora_A):
            continue
        if name.rsplit(".", 1)[-1] not in TARGETS or adapter in getattr(module, "lora_variant", {}):
            found.append(name)
    return found


class LoraStacks:
    """Per layer and fused projection: [(output slice, slots by adapter name, A, B, scale, B
    transposed)]; lora.c reads B transposed, so that a row's delta is computed along the output."""

    def __init__(self, peft_model, layers: int):
        from peft.tuners.lora.layer import Linear as LoraLinear

        inner = peft_model.base_model.model.model
        self.parts: list[dict[str, list]] = []
        for i in range(layers):
            layer = inner.layers[i]
            by_key = {}
            for key, (parent, names) in PARTS.items():
                start, entries = 0, []
                for name in names:
                    module = getattr(getattr(layer, parent), name)
                    width = module.out_features
                    if isinstance(module, LoraLinear):
                        slots, a, b, scale = stack(module)
                        if slots:
                            bt = b.transpose(1, 2).contiguous()
                            entries.append((slice(start, start + width), slots, a, b, scale, bt))
                    start += width
                by_key[key] = entries
            self.parts.append(by_key)

    def plan(self, adapters: list[str], *, gathered: bool, kernels=None) -> LoraPlan | None:
        """What each row adds; None when no row has an adapter. `gathered`: one token per row (a
        decode step), computed by lora.c where `kernels` are given."""
        if all(name is None for name in adapters):
            return None
        return LoraPlan(self, adapters, gathered, kernels)


class LoraPlan:
    def __init__(self, stacks: LoraStacks, adapters: list[str | None], gathered: bool, kernels=None):
        self.stacks = stacks
        self.adapters = adapters
        self.gathered = gathered
        self.kernels = kernels
        self._rows: dict[int, torch.Tensor | None] = {}  # by id of a slots dict

    def _slots(self, slots: dict[str, int]) -> torch.Tensor | None:
        key = id(slots)
        if key not in self._rows:
            rows = torch.tensor([slots.get(name, 0) if name else 0 for name in self.adapters])
            self._rows[key] = rows if bool(rows.any()) else None
        return self._rows[key]

    def add(self, layer: int, key: str, x: torch.Tensor, y: torch.Tensor) -> None:
        """y[:, part] += each row's adapter's delta for the layer's `key` projection."""
        for columns, slots, a, b, scale, bt in self.stacks.parts[layer][key]:
            rows = self._slots(slots)
            if rows is None:
                continue
            if self.gathered and self.kernels is not None and a.dtype == torch.float32:
                self.kernels.lora(x, rows, a, bt, scale, y, columns)
                continue
            # The decoder computes in float32; adapters of a model loaded in bfloat16 are in bfloat16.
            if self.gathered:
                hidden = torch.bmm(x[:, None, :].to(a.dtype), a[rows].transpose(1, 2))
                delta = torch.bmm(hidden, b[rows].transpose(1, 2))[:, 0] * scale[rows][:, None]
                y[:, columns] += delta.to(y.dtype)
                continue
            for slot in rows.unique().tolist():
                if slot == 0:
                    continue
                where = (rows == slot).nonzero()[:, 0]
                y[where, columns] += ((x[where].to(a.dtype) @ a[slot].T @ b[slot].T) * scale[slot]).to(y.dtype)
