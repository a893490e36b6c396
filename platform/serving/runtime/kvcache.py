"""Operations on a batch's key/value cache that continuous batching needs and transformers'
DynamicCache does not offer: joining two batches and trimming shared left padding.

Every layer holds keys and values shaped [batch, heads, sequence, head_dim]; rows are
left-padded, with the attention mask marking the real positions.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def layers(cache):
    """The cache's layers that hold keys and values."""
    return [layer for layer in cache.layers if getattr(layer, "is_initialized", False)]


def _pad_left(tensor: torch.Tensor, length: int) -> torch.Tensor:
    missing = length - tensor.shape[-2]
    return tensor if missing == 0 else F.pad(tensor, (0, 0, missing, 0))


def join(cache, mask: torch.Tensor, other_cache, other_mask: torch.Tensor) -> torch.Tensor:
    """Append `other`'s rows to `cache` in place; return the joined attention mask."""
    length = max(mask.shape[1], other_mask.shape[1])
    for mine, theirs in zip(layers(cache), layers(other_cache), strict=True):
        mine.keys = torch.cat([_pad_left(mine.keys, length), _pad_left(theirs.keys, length)], dim=0)
        mine.values = torch.cat([_pad_left(mine.values, length), _pad_left(theirs.values, length)], dim=0)
    return torch.cat([F.pad(mask, (length - mask.shape[1], 0)), F.pad(other_mask, (length - other_mask.shape[1], 0))])


def keep_rows(cache, mask: torch.Tensor, rows: list[int]) -> torch.Tensor:
    """Keep only `rows`, then drop the left columns that are padding for every remaining row."""
    index = torch.tensor(rows, dtype=torch.long)
    mask = mask[index]
    real = mask.any(dim=0).nonzero()
    start = int(real[0]) if len(real) else mask.shape[1]
    for layer in layers(cache):
        layer.keys = layer.keys[index, :, start:, :]
        layer.values = layer.values[index, :, start:, :]
    return mask[:, start:]
