"""What computes the model for the engine: a prefill of new rows, then one decode step after another
over the running batch, each row with its adapter.

Two runners keep one interface, so the engine's scheduling (continuous batching, preemption,
stalled readers, the prompt cache) is written once:
- `NativeRunner`, the default for Llama-family models: the runtime's own forward pass
  (`serving.runtime.native`), reading a GGUF's weight blocks in decode steps;
- `TransformersRunner`, for any other model transformers loads: its forward pass over a
  left-padded batch and its cache (`serving.runtime.kvcache`).

A batch state (`Slots`, `PaddedBatch`) joins rows, keeps rows (dropping or copying them) and
hands out a row's prompt keys and values for the prompt cache.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from serving.runtime import kvcache
from serving.runtime.adapters import BASE, AdapterManager
from serving.runtime.native import decoder as native
from serving.runtime.native.lora import LoraStacks, unsupported_modules
from serving.runtime.prefix_cache import Hit
from serving.runtime.serve import DECODERS

log = logging.getLogger("serving.runtime")


class NativeRunner:
    name = "native"

    def __init__(self, model, adapters: AdapterManager, max_len: int, blocks: dict | None = None, kernels=None):
        self.adapters = adapters
        self.decoder = native.LlamaDecoder(model, blocks or {}, kernels, max_len)
        self.layers = len(self.decoder.layers)
        self._stacks: tuple[int, LoraStacks] | None = None
        self._decode_plan: tuple[tuple, object] | None = None

    def describe(self) -> str:
        from_blocks = self.decoder.block_layers + (self.decoder.head.blocks is not None)
        return f"native decoder, {from_blocks} of {4 * self.layers + 1} projections read from weight blocks"

    def refusal(self, adapter: str) -> str | None:
        modules = unsupported_modules(self.adapters.peft_model, adapter)
        if modules:
            return (
                f"The adapter {adapter!r} has LoRA layers this runtime cannot apply ({', '.join(modules[:3])}): "
                "only plain LoRA on the attention and MLP projections is served."
            )
        return None

    def _plan(self, adapters: list[str], *, gathered: bool):
        if all(name == BASE for name in adapters) or self.adapters.peft_model is None:
            return None
        version = self.adapters.stacks.version
        if self._stacks is None or self._stacks[0] != version:
            self._stacks = (version, LoraStacks(self.adapters.peft_model, self.layers))
        rows = [None if name == BASE else name for name in adapters]
        if not gathered:
            return self._stacks[1].plan(rows, gathered=False)
        # Decode steps follow each other with the same rows until one joins or leaves: one plan
        # (and its per-layer row indices) serves them all.
        key = (version, tuple(rows))
        if self._decode_plan is None or self._decode_plan[0] != key:
            self._decode_plan = (key, self._stacks[1].plan(rows, gathered=True, kernels=self.decoder.kernels))
        return self._decode_plan[1]

    def prefill(self, sequences: list[list[int]], adapters: list[str], prefixes: list[Hit | None]):
        longest = max(len(s) + (hit.length if hit else 0) for s, hit in zip(sequences, prefixes, strict=True))
        slots = self.decoder.new_slots(len(sequences), longest + 1)
        suffixes = []
        for row, (sequence, hit) in enumerate(zip(sequences, prefixes, strict=True)):
            if hit is not None:
                for layer, (keys, values) in enumerate(zip(hit.keys, hit.values, strict=True)):
                    slots.keys[layer][row, :, : hit.length] = keys[0]
                    slots.values[layer][row, :, : hit.length] = values[0]
                slots.lengths[row] = hit.length
                sequence = sequence[hit.length :]
            suffixes.append(sequence)
        per_token = [name for name, s in zip(adapters, suffixes, strict=True) for _ in s]
        logits = self.decoder.prefill(slots, suffixes, self._plan(per_token, gathered=False))
        return logits, slots

    def decode(self, slots, tokens: list[int], ready: list[bool], adapters: list[str]) -> torch.Tensor:
        return self.decoder.decode(
            slots, torch.tensor(tokens), torch.tensor(ready), self._plan(adapters, gathered=True)
        )


class PaddedBatch:
    """transformers' cache of a left-padded batch and its attention mask."""

    def __init__(self, cache, mask: torch.Tensor):
        self.cache, self.mask = cache, mask

    def __len__(self) -> int:
        return self.mask.shape[0]

    def join(self, other: PaddedBatch) -> None:
        self.mask = kvcache.join(self.cache, self.mask, other.cache, other.mask)

    def keep(self, rows: list[int]) -> None:
        self.mask = kvcache.keep_rows(self.cache, self.mask, rows)

    def prefix(self, row: int, length: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        columns = self.mask[row].nonzero()[:length, 0]
        layers = kvcache.layers(self.cache)
        return [layer.keys[row, :, columns] for layer in layers], [layer.values[row, :, columns] for layer in layers]


class TransformersRunner:
    name = "transformers"

    def __init__(self, adapters: AdapterManager, pad_id: int):
        self.adapters = adapters
        self.pad_id = pad_id

    def describe(self) -> str:
        return "transformers' forward pass"

    def refusal(self, adapter: str) -> str | None:
        return None

    def _forward(self, input_ids, mask, positions, cache, adapters: list[str]):
        model = self.adapters.model
        extra = {"adapter_names": adapters} if self.adapters.peft_model is not None else {}
        out = model(
            input_ids=input_ids,
            attention_mask=mask,
            position_ids=positions,
            past_key_values=cache,
            use_cache=True,
            logits_to_keep=1,  # a prefill needs its last position's logits only, not the head over every token
            **extra,
        )
        return out.logits[:, -1, :], out.past_key_values

    def _padded(self, sequences: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Token ids left-padded to one length, their attention mask and positions."""
        length = max(len(sequence) for sequence in sequences)
        ids = torch.full((len(sequences), length), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(sequences), length), dtype=torch.long)
        for i, sequence in enumerate(sequences):
            ids[i, length - len(sequence) :] = torch.tensor(sequence)
            mask[i, length - len(sequence) :] = 1
        return ids, mask, (mask.cumsum(-1) - 1).clamp(min=0)

    def prefill(self, sequences: list[list[int]], adapters: list[str], prefixes: list[Hit | None]):
        """Rows without a cached prefix are computed together; a row with one, on its prefix alone."""
        from transformers import DynamicCache

        plain = [i for i, hit in enumerate(prefixes) if hit is None]
        pieces: list[tuple[list[int], torch.Tensor, PaddedBatch]] = []
        if plain:
            ids, mask, positions = self._padded([sequences[i] for i in plain])
            logits, cache = self._forward(ids, mask, positions, DynamicCache(), [adapters[i] for i in plain])
            pieces.append((plain, logits, PaddedBatch(cache, mask)))
        for i, hit in enumerate(prefixes):
            if hit is None:
                continue
            total = len(sequences[i])
            suffix = torch.tensor([sequences[i][hit.length :]], dtype=torch.long)
            positions = torch.arange(hit.length, total, dtype=torch.long)[None]
            mask = torch.ones((1, total), dtype=torch.long)
            prefix = DynamicCache(ddp_cache_data=list(zip(hit.keys, hit.values, strict=True)))
            logits, cache = self._forward(suffix, mask, positions, prefix, [adapters[i]])
            pieces.append(([i], logits, PaddedBatch(cache, mask)))
        order = [i for rows, _, _ in pieces for i in rows]
        batch = pieces[0][2]
        for _, _, piece in pieces[1:]:
            batch.join(piece)
        logits = torch.cat([logits for _, logits, _ in pieces])
        if order != sorted(order):  # back to the callers' order
            back = [order.index(i) for i in range(len(order))]
            batch.keep(back)
            logits = logits[torch.tensor(back)]
        return logits, batch

    def decode(self, batch: PaddedBatch, tokens: list[int], ready: list[bool], adapters: list[str]) -> torch.Tensor:
        last = torch.tensor([[token] for token in tokens], dtype=torch.long)
        positions = batch.mask.sum(-1, keepdim=True)
        # A waiting row takes part in the pass (the batch keeps its shape) with its new position
        # masked out: its last token goes in again, for real, once its reader has caught up.
        step = torch.tensor([[int(r)] for r in ready], dtype=torch.long)
        batch.mask = torch.cat([batch.mask, step], dim=1)
        logits, batch.cache = self._forward(last, batch.mask, positions, batch.cache, adapters)
        return logits


def build(
    model,
    adapters: AdapterManager,
    *,
    max_len: int,
    pad_id: int,
    decoder: str = "auto",
    blocks: dict | None = None,
    kernels=None,
):
    """The runner for `decoder`: auto takes the native decoder where it runs the model."""
    if decoder not in DECODERS:
        raise ValueError(f"decoder must be one of {', '.join(DECODERS)}, not {decoder!r}")
    reason = native.unsupported(model.config)
    if decoder == "native" and reason:
        raise ValueError(f"The native decoder cannot run this model: {reason}")
    if decoder == "transformers" or reason:
        if reason:
            log.info("transformers' forward pass serves this model (the native decoder does not take %s)", reason)
        return TransformersRunner(adapters, pad_id)
    return NativeRunner(model, adapters, max_len, blocks, kernels)


def for_loaded(loaded, adapters: AdapterManager, cache_dir: Path, *, max_len: int, decoder: str = "auto"):
    """The runner for a model as `catalog.loader.load_model` loaded it: the native decoder reads a
    GGUF's weight blocks with the kernels compiled into `cache_dir` (where they can be built)."""
    from catalog.loader import gguf_blocks
    from serving.runtime.native import kernels as native_kernels

    blocks, kernels = {}, None
    if decoder != "transformers" and loaded.source.format == "gguf" and not native.unsupported(loaded.model.config):
        kernels = native_kernels.load(cache_dir)
        if kernels is not None:
            weights = Path(loaded.weights_dir)
            blocks = gguf_blocks.load(loaded.model, loaded.source.path, weights if weights.is_dir() else None)
    pad_id = loaded.tokenizer.pad_token_id
    if pad_id is None:
        pad_id = loaded.tokenizer.eos_token_id
    return build(
        loaded.model, adapters, max_len=max_len, pad_id=pad_id, decoder=decoder, blocks=blocks, kernels=kernels
    )
