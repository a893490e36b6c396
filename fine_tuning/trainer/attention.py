"""Attention over a packed row: each example attends to itself only, one example at a time.

A step's examples travel as one row without padding (data.collate), so the model's linear layers
compute real tokens only. transformers' own attention would take that row with a [T, T]
block-diagonal mask: T² scores of which only the examples' own triangles count, and a mask the
fused kernels cannot skip. Here each example's slice goes through PyTorch's fused causal kernel
alone: the same result, with work proportional to the sum of the examples' squared lengths.

Registered in transformers' attention registry under NAME; the trainer selects it on its model and
passes the row's example boundaries as the `segments` keyword, which transformers hands from the
model's forward down to every attention call.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

NAME = "maas_segments"


def segment_attention(
    module,
    query: torch.Tensor,  # [B, heads, T, head_dim]
    key: torch.Tensor,  # [B, kv_heads, T, head_dim]
    value: torch.Tensor,
    attention_mask,
    *,
    scaling: float | None = None,
    dropout: float = 0.0,
    sliding_window: int | None = None,
    segments: list[tuple[int, int]] | None = None,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    for feature in ("softcap", "s_aux"):
        if kwargs.get(feature) is not None:
            raise NotImplementedError(f"packed training does not support attention with {feature}")
    if segments is None:
        segments = [(0, query.shape[2])]
    kind = query.dtype
    if query.device.type == "cpu":
        # PyTorch's fused CPU attention runs its backward pass about twice as fast in float32 as in
        # bfloat16, and these scores are a small part of a step's arithmetic.
        query, key, value = query.float(), key.float(), value.float()
    grouped = query.shape[1] != key.shape[1]
    parts = []
    for start, end in segments:
        q, k, v = query[:, :, start:end], key[:, :, start:end], value[:, :, start:end]
        window = _window_mask(end - start, sliding_window, q.device)
        parts.append(
            F.scaled_dot_product_attention(
                q,
                k,
                v,
                attn_mask=window,
                is_causal=window is None,
                dropout_p=dropout,
                scale=scaling,
                enable_gqa=grouped,
            )
        )
    out = parts[0] if len(parts) == 1 else torch.cat(parts, dim=2)
    return out.transpose(1, 2).contiguous().to(kind), None


def _window_mask(length: int, window: int | None, device) -> torch.Tensor | None:
    """A causal mask that also forgets keys `window` or more positions back (Mistral-style sliding
    windows), or None when the example fits in the window and plain causal attention is exact."""
    if window is None or length <= window:
        return None
    positions = torch.arange(length, device=device)
    distance = positions[:, None] - positions[None, :]
    return (distance >= 0) & (distance < window)


def install(model) -> None:
    """Select segment attention on `model` (a transformers model, or a PEFT model around one)."""
    from transformers import AttentionInterface

    AttentionInterface.register(NAME, segment_attention)
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    base.set_attn_implementation(NAME)
