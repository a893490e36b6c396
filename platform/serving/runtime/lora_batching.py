"""Many adapters in one batch at the cost of one: gathered LoRA for mixed batches.

PEFT's mixed-batch path loops over the adapters present in a batch inside every LoRA layer (a
sub-batch, two matmuls and a scatter per adapter per layer), so its cost grows with the number
of distinct adapters. Here every LoRA linear layer keeps all loaded adapters' A and B matrices
stacked (ranks zero-padded to the largest, slot 0 all zeros for base-model rows and for adapters
that do not touch this layer); a forward pass gathers each row's pair and runs two batched
matmuls, whatever the number of adapters (the approach of S-LoRA / Punica's BGMV).

Rows still name their adapter explicitly; no model-global active adapter is ever switched.
Adapters with a LoRA variant (DoRA, aLoRA, ...) fall back to PEFT's own path.
"""

from __future__ import annotations

import types

import torch


class Stacks:
    """Invalidated by the adapter manager whenever an adapter is loaded or unloaded."""

    def __init__(self):
        self.version = 0

    def bump(self) -> None:
        self.version += 1


def install(peft_model, stacks: Stacks) -> int:
    """Route the mixed-batch forward of every LoRA linear layer through the gathered version.
    Idempotent; call after each adapter load (new adapters may add LoRA layers)."""
    from peft.tuners.lora.layer import Linear as LoraLinear

    installed = 0
    for module in peft_model.modules():
        if isinstance(module, LoraLinear) and not getattr(module, "_maas_gathered", False):
            original = module._mixed_batch_forward
            module._mixed_batch_forward = types.MethodType(_gathered_forward(original, stacks), module)
            module._maas_gathered = True
            module._maas_stack = None
            installed += 1
    return installed


def stack(layer) -> tuple[dict[str, int], torch.Tensor, torch.Tensor, torch.Tensor]:
    names = [name for name in layer.lora_A if name not in layer.lora_variant]
    rank = max((layer.lora_A[n].weight.shape[0] for n in names), default=1)
    in_features, out_features = layer.in_features, layer.out_features
    weight = layer.base_layer.weight
    a = torch.zeros((len(names) + 1, rank, in_features), dtype=weight.dtype, device=weight.device)
    b = torch.zeros((len(names) + 1, out_features, rank), dtype=weight.dtype, device=weight.device)
    scale = torch.zeros(len(names) + 1, dtype=weight.dtype, device=weight.device)
    for slot, name in enumerate(names, start=1):
        r = layer.lora_A[name].weight.shape[0]
        a[slot, :r] = layer.lora_A[name].weight.detach()
        b[slot, :, :r] = layer.lora_B[name].weight.detach()
        scale[slot] = layer.scaling[name]
    return {name: slot for slot, name in enumerate(names, start=1)}, a, b, scale


def _gathered_forward(original, stacks: Stacks):
    def forward(self, x: torch.Tensor, *args, adapter_names: list[str], **kwargs):
        if any(name in self.lora_variant for name in set(adapter_names)):
            return original(x, *args, adapter_names=adapter_names, **kwargs)
        kwargs.pop("alora_offsets", None)
        result = self.base_layer(x, *args, **kwargs)
        if self._maas_stack is None or self._maas_stack[0] != stacks.version:
            self._maas_stack = (stacks.version, *stack(self))
        _, slots, a, b, scale = self._maas_stack
        rows = torch.tensor([slots.get(name, 0) for name in adapter_names], device=x.device)
        if not bool(rows.any()):
            return result  # base-model rows only
        flat = x.to(a.dtype).reshape(x.shape[0], -1, x.shape[-1])  # [batch, tokens, in]
        hidden = torch.bmm(flat, a[rows].transpose(1, 2))  # [batch, tokens, rank]
        delta = torch.bmm(hidden, b[rows].transpose(1, 2)) * scale[rows].view(-1, 1, 1)  # [batch, tokens, out]
        return result + delta.reshape(result.shape).to(result.dtype)

    return forward
