"""An embedding model's forward passes: the encoder, then the pooling its sentence-transformers
configuration names (mean or CLS token, normalized when its modules say so).

One thread owns the model. Requests queue; each forward pass takes every input waiting (up to
`max_batch`, shortest first so padding stays small), and each request's future gets its vectors
when the last of its inputs is done, so many small concurrent requests share passes.
"""

from __future__ import annotations

import json
import logging
import queue
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path

import torch

from serving.runtime import metrics
from serving.runtime.serve import Loop

log = logging.getLogger("serving.runtime")


@dataclass(frozen=True)
class Pooling:
    mode: str  # "mean" | "cls"
    normalize: bool


def read_pooling(directory: Path) -> Pooling:
    """The pooling a sentence-transformers directory declares; a plain transformers directory
    (no modules.json) is mean-pooled and normalized, the common choice for embedding models."""
    modules_file = directory / "modules.json"
    if not modules_file.is_file():
        return Pooling("mean", True)
    modules = json.loads(modules_file.read_text())
    normalize = any(m.get("type", "").endswith(".Normalize") for m in modules)
    mode = "mean"
    for module in modules:
        if module.get("type", "").endswith(".Pooling"):
            config = json.loads((directory / module.get("path", "") / "config.json").read_text())
            if config.get("pooling_mode_cls_token"):
                mode = "cls"
            elif not config.get("pooling_mode_mean_tokens", True):
                raise ValueError(f"Unsupported pooling in {directory}: {config}")
    return Pooling(mode, normalize)


def max_length_of(directory: Path, model) -> int:
    """sentence-transformers' max_seq_length (the length the model was tuned for), else the
    model's positions."""
    config = directory / "sentence_bert_config.json"
    if config.is_file():
        length = json.loads(config.read_text()).get("max_seq_length")
        if isinstance(length, int) and length > 0:
            return length
    return int(getattr(model.config, "max_position_embeddings", 512))


def _special_tokens(tokenizer) -> tuple[list[int], list[int]]:
    """What the tokenizer puts before and after a text's tokens, learnt from one text."""
    bare = tokenizer.encode("a", add_special_tokens=False)
    full = tokenizer.encode("a", add_special_tokens=True)
    for start in range(len(full) - len(bare) + 1):
        if full[start : start + len(bare)] == bare:
            return full[:start], full[start + len(bare) :]
    return [], []


@dataclass
class EmbeddingJob:
    inputs: list[list[int]]  # token ids with the model's special tokens
    future: Future = field(default_factory=Future)
    vectors: list = field(default_factory=list)
    remaining: int = 0


class Embedder(Loop):
    thread_name = "embedder"

    def __init__(self, model, tokenizer, pooling: Pooling, *, max_length: int, max_batch: int = 64):
        super().__init__()
        self.model, self.tokenizer, self.pooling = model, tokenizer, pooling
        self.max_length, self.max_batch = max_length, max_batch
        self.dimensions = int(model.config.hidden_size)
        self.vocab_size = int(model.config.vocab_size)
        self.pad_id = tokenizer.pad_token_id or 0
        self.prefix, self.suffix = _special_tokens(tokenizer)
        self.waiting: queue.Queue[EmbeddingJob] = queue.Queue()

    def token_ids(self, item: str | list[int]) -> list[int]:
        """An input as the model reads it: a text tokenized, or token ids, with the special tokens
        (for BERT, [CLS] ... [SEP]) added either way, so both forms of one text embed alike."""
        ids = self.tokenizer.encode(item, add_special_tokens=False) if isinstance(item, str) else list(item)
        return [*self.prefix, *ids, *self.suffix]

    def submit(self, inputs: list[list[int]]) -> Future:
        job = EmbeddingJob(inputs, remaining=len(inputs))
        job.vectors = [None] * len(inputs)
        metrics.QUEUE_DEPTH.inc()
        self.waiting.put(job)
        return job.future

    def _loop(self) -> None:
        pending: list[tuple[EmbeddingJob, int]] = []  # (job, input index) not yet embedded
        while not self._stop.is_set():
            if not pending:
                try:
                    job = self.waiting.get(timeout=0.1)
                except queue.Empty:
                    continue
                self._admit(job, pending)
            while True:  # everything that arrived meanwhile joins this pass
                try:
                    self._admit(self.waiting.get_nowait(), pending)
                except queue.Empty:
                    break
            pending.sort(key=lambda entry: len(entry[0].inputs[entry[1]]))
            batch, pending = pending[: self.max_batch], pending[self.max_batch :]
            try:
                vectors = self._forward([job.inputs[i] for job, i in batch])
            except Exception as error:  # one bad pass fails its requests, not the server
                log.exception("embedding pass failed")
                for job, _ in batch:
                    if not job.future.done():
                        metrics.RUNNING.dec()
                        job.future.set_exception(error)
                continue
            for (job, index), vector in zip(batch, vectors, strict=True):
                if job.future.done():
                    continue
                job.vectors[index] = vector
                job.remaining -= 1
                if job.remaining == 0:
                    metrics.RUNNING.dec()
                    job.future.set_result(job.vectors)

    @staticmethod
    def _admit(job: EmbeddingJob, pending: list) -> None:
        metrics.QUEUE_DEPTH.dec()
        metrics.RUNNING.inc()
        pending.extend((job, i) for i in range(len(job.inputs)))

    @torch.inference_mode()
    def _forward(self, inputs: list[list[int]]) -> list[list[float]]:
        width = max(len(ids) for ids in inputs)
        ids = torch.full((len(inputs), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(inputs), width), dtype=torch.long)
        for row, tokens in enumerate(inputs):
            ids[row, : len(tokens)] = torch.tensor(tokens)
            mask[row, : len(tokens)] = 1
        hidden = self.model(input_ids=ids, attention_mask=mask).last_hidden_state.float()
        if self.pooling.mode == "cls":
            pooled = hidden[:, 0]
        else:
            weights = mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1)
        if self.pooling.normalize:
            pooled = torch.nn.functional.normalize(pooled, p=2, dim=1)
        return pooled.tolist()
