"""The adapter's dropout, at a fraction of its cost on a CPU.

PEFT drops out each LoRA layer's input with torch's dropout. On a CPU that draws one Mersenne
Twister number per element on one thread: with dropout on every linear layer it was a fifth of a
training step of the demo model. Here:

- one 64-bit draw gives four 16-bit lanes, and an element is kept when its lane falls below the
  threshold; the keep probability is a multiple of 1/65536 (at most 1/131072 from the one asked
  for), and kept elements are scaled by its exact inverse, so the expected output is the input, as
  with torch's dropout;
- layers that read the very same tensor (the query, key and value projections read one
  normalised hidden state, the gate and up projections another) share one mask, as they would if
  the projections were fused into one matrix: 4 masks a transformer block instead of 7.

Random numbers come from torch's generator, so a seeded run is reproducible and a checkpoint's
saved RNG state resumes it.
"""

from __future__ import annotations

import torch

LANES = 65536


class _Drop(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, keep, scale):
        ctx.save_for_backward(keep)
        ctx.scale = scale
        return torch.where(keep, x, 0.0).mul_(scale)

    @staticmethod
    def backward(ctx, grad):
        (keep,) = ctx.saved_tensors
        return torch.where(keep, grad, 0.0).mul_(ctx.scale), None, None


def keep_mask(shape: torch.Size, p: float, device) -> tuple[torch.Tensor, float]:
    """A boolean mask keeping each element with probability ~(1 - p), and the scale of kept ones."""
    kept = round((1.0 - p) * LANES)  # lanes below the threshold: kept / 65536 of them
    count = shape.numel()
    draws = torch.empty((count + 3) // 4, dtype=torch.int64, device=device).random_(-(2**63), None)
    lanes = draws.view(torch.int16)[:count]  # uniform over [-32768, 32767]
    return (lanes < kept - LANES // 2).view(shape), LANES / kept


class SharedDropout(torch.nn.Module):
    """Dropout that hands a layer the output it already gave for the same input tensor."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p
        self._last: tuple | None = None  # (input, its version, output)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            self._last = None
            return x
        last = self._last
        if last is not None and last[0] is x and last[1] == x._version:
            return last[2]
        keep, scale = keep_mask(x.shape, self.p, x.device)
        out = _Drop.apply(x, keep, scale)
        self._last = (x, x._version, out)
        return out

    def forget(self) -> None:
        """Release the last input and output (after a step: they belong to its graph)."""
        self._last = None

    def extra_repr(self) -> str:
        return f"p={self.p}"


def install(model, p: float) -> SharedDropout | None:
    """Give every LoRA layer of `model` one SharedDropout of rate `p` (the adapter's dropout);
    returns it, or None when the adapter has no dropout."""
    if p == 0:
        return None
    shared = SharedDropout(p)
    for module in model.modules():
        dropouts = getattr(module, "lora_dropout", None)
        if isinstance(dropouts, torch.nn.ModuleDict):
            for name in dropouts:
                dropouts[name] = shared
    return shared
