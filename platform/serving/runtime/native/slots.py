"""The running rows' keys and values for the native decoder: per layer [rows, kv_heads, capacity,
head_dim], row b's tokens in columns [0, length_b). Rows join (a prefill's newcomers), leave
(finished, cancelled, preempted) and are copied (a request's n choices share one prefill)."""

from __future__ import annotations

import torch

GROWTH = 256  # columns added at a time (rounded up), so that the cache is not copied every step


class Slots:
    def __init__(self, layers: int, rows: int, kv_heads: int, capacity: int, head_dim: int):
        shape = (rows, kv_heads, capacity, head_dim)
        self.keys = [torch.zeros(shape) for _ in range(layers)]
        self.values = [torch.zeros(shape) for _ in range(layers)]
        self.lengths = torch.zeros(rows, dtype=torch.long)

    def __len__(self) -> int:
        return len(self.lengths)

    @property
    def capacity(self) -> int:
        return self.keys[0].shape[2]

    def reserve(self, columns: int) -> None:
        """Room for `columns` tokens in every row."""
        if columns <= self.capacity:
            return
        grown = -(-max(columns, self.capacity + GROWTH) // GROWTH) * GROWTH
        self._resize(grown)

    def _resize(self, columns: int) -> None:
        keep = min(columns, self.capacity)
        for store in (self.keys, self.values):
            for i, tensor in enumerate(store):
                rows, heads, _, dim = tensor.shape
                resized = torch.zeros((rows, heads, columns, dim))
                resized[:, :, :keep] = tensor[:, :, :keep]
                store[i] = resized

    def join(self, other: Slots) -> None:
        """Append `other`'s rows."""
        columns = max(self.capacity, other.capacity)
        for slots in (self, other):  # exactly as wide (reserve would round one of them up)
            if slots.capacity < columns:
                slots._resize(columns)
        for mine, theirs in ((self.keys, other.keys), (self.values, other.values)):
            for i in range(len(mine)):
                mine[i] = torch.cat([mine[i], theirs[i]])
        self.lengths = torch.cat([self.lengths, other.lengths])

    def keep(self, rows: list[int]) -> None:
        """Only these rows, in this order (a row listed twice is copied)."""
        index = torch.tensor(rows, dtype=torch.long)
        longest = int(self.lengths[index].max()) if rows else 0
        # Release what the longest remaining row does not need, beyond one step of growth.
        columns = min(self.capacity, -(-max(longest + 1, 1) // GROWTH) * GROWTH)
        for store in (self.keys, self.values):
            for i, tensor in enumerate(store):
                store[i] = tensor[index, :, :columns].contiguous()
        self.lengths = self.lengths[index]

    def prefix(self, row: int, length: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """A row's first `length` keys and values, per layer [kv_heads, length, head_dim] (views)."""
        return [k[row, :, :length] for k in self.keys], [v[row, :, :length] for v in self.values]
