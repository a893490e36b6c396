"""The runtime's prompt cache: the keys and values of recent prompts, reused by a later prompt
that starts the same way, so only the rest is computed (a long system prompt, a growing chat).

Prompts are cached in blocks of BLOCK tokens, each block named by a hash chained over the blocks
before it and a namespace: the organization's cache salt (sent by the gateway; a request without
one is neither cached nor served from the cache), the adapter and its weights (an adapter changes
every key and value). So one organization's prompt is never a hit for another's, which could
otherwise learn from a faster answer that a prefix had been sent.

Entries are kept least recently used first, within a byte budget.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import dataclass, field

import torch

BLOCK = 64  # tokens a cached block holds: prefixes are reused in whole blocks
MIN_TOKENS = 256  # shorter prompts cost little to compute again


@dataclass
class _Entry:
    namespace: str
    keys: list[torch.Tensor]  # per layer, [heads, tokens, head_dim]
    values: list[torch.Tensor]
    length: int
    size: int
    boundaries: list[bytes] = field(default_factory=list)


@dataclass(frozen=True)
class Hit:
    length: int  # prompt tokens whose keys and values are reused
    keys: list[torch.Tensor]  # per layer, [1, heads, length, head_dim]
    values: list[torch.Tensor]


class PrefixCache:
    def __init__(self, budget_bytes: int):
        self.budget = budget_bytes
        self.used = 0
        self._entries: OrderedDict[int, _Entry] = OrderedDict()
        self._index: dict[bytes, tuple[int, int]] = {}  # block-chain hash -> (entry, tokens)
        self._next = 0

    @staticmethod
    def _chain(namespace: str, tokens: list[int], blocks: int) -> list[bytes]:
        digest = hashlib.sha256(namespace.encode()).digest()
        found = []
        for k in range(blocks):
            block = tokens[k * BLOCK : (k + 1) * BLOCK]
            digest = hashlib.sha256(digest + b"".join(t.to_bytes(4, "little") for t in block)).digest()
            found.append(digest)
        return found

    def lookup(self, namespace: str, tokens: list[int]) -> Hit | None:
        """The longest cached prefix of `tokens` in whole blocks, leaving at least one token to
        compute (its logits give the first answer token)."""
        blocks = (len(tokens) - 1) // BLOCK
        if blocks * BLOCK < MIN_TOKENS:
            return None
        for k, digest in reversed(list(enumerate(self._chain(namespace, tokens, blocks), start=1))):
            found = self._index.get(digest)
            if found is None or k * BLOCK < MIN_TOKENS:
                continue
            entry = self._entries[found[0]]
            self._entries.move_to_end(found[0])
            length = found[1]
            return Hit(
                length,
                [layer[None, :, :length, :] for layer in entry.keys],
                [layer[None, :, :length, :] for layer in entry.values],
            )
        return None

    def store(self, namespace: str, tokens: list[int], keys: list[torch.Tensor], values: list[torch.Tensor]) -> None:
        """Keep a prompt's keys and values (per layer, [heads, len(tokens), head_dim]) in whole
        blocks, unless its longest whole-block prefix is cached already."""
        blocks = len(tokens) // BLOCK
        length = blocks * BLOCK
        if length < MIN_TOKENS:
            return
        chain = self._chain(namespace, tokens, blocks)
        if chain[-1] in self._index:
            self._entries.move_to_end(self._index[chain[-1]][0])
            return
        kept_keys = [layer[:, :length, :].clone() for layer in keys]
        kept_values = [layer[:, :length, :].clone() for layer in values]
        size = sum(t.numel() * t.element_size() for t in (*kept_keys, *kept_values))
        if size > self.budget:
            return
        while self.used + size > self.budget and self._entries:
            self._evict()
        entry_id, self._next = self._next, self._next + 1
        entry = _Entry(namespace, kept_keys, kept_values, length, size)
        for k, digest in enumerate(chain, start=1):
            if digest not in self._index:
                self._index[digest] = (entry_id, k * BLOCK)
                entry.boundaries.append(digest)
        self._entries[entry_id] = entry
        self.used += size

    def _evict(self) -> None:
        entry_id, entry = self._entries.popitem(last=False)
        self.used -= entry.size
        for digest in entry.boundaries:
            if self._index.get(digest, (None,))[0] == entry_id:
                del self._index[digest]
