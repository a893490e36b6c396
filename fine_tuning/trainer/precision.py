"""The arithmetic a training step runs in: bfloat16 matrix products where the hardware computes
them natively, float32 everywhere else.

"auto" (the default) means bfloat16 on a CPU with AVX-512 BF16 or AMX and on a GPU that has it,
float32 elsewhere (catalog.loader.dtypes decides, as it does for serving). In bfloat16:

- the frozen base model's linear weights are stored in bfloat16 once, instead of being converted
  at every forward pass, and take half the memory;
- the forward pass runs under autocast, so matrix products take bfloat16 inputs and accumulate in
  float32, while normalisation, softmax, the loss and the residual stream stay in float32;
- the adapter's weights, their gradients and the optimizer's state stay float32: the small updates
  of a low learning rate are not rounded away.

float16 is never chosen: it would need loss scaling, and every device that offers bfloat16
computes it at least as fast.
"""

from __future__ import annotations

import contextlib

import torch

from fine_tuning.trainer.config import PRECISIONS


def resolve(precision: str, device: torch.device) -> torch.dtype:
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
    if precision == "auto":
        from catalog.loader.dtypes import resolve_dtype

        precision = "bfloat16" if resolve_dtype("auto", str(device)) == "bfloat16" else "float32"
    return getattr(torch, precision)


def prepare(model, dtype: torch.dtype) -> int:
    """Store the frozen linear weights in `dtype`; returns how many were converted. A weight shared
    with the input embeddings (a tied output layer) stays as it is: the residual stream starts from
    the embeddings and stays float32."""
    if dtype == torch.float32:
        return 0
    embeddings = model.get_input_embeddings().weight
    converted = 0
    for module in model.modules():
        weight = getattr(module, "weight", None)
        if not isinstance(module, torch.nn.Linear) or weight.requires_grad or weight is embeddings:
            continue
        module.weight.data = weight.data.to(dtype)
        if module.bias is not None and not module.bias.requires_grad:
            module.bias.data = module.bias.data.to(dtype)
        converted += 1
    return converted


def autocast(device: torch.device, dtype: torch.dtype):
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)
