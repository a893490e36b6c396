"""Choosing the next token for each row: penalties, logit bias, temperature, top-p, seeded draws."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class SamplingParams:
    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    stop: list[str] = field(default_factory=list)
    seed: int | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: dict[int, float] = field(default_factory=dict)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


class Sampler:
    """Per-request sampling state; a seeded request draws from its own generator, so its output
    does not depend on what else is in the batch."""

    def __init__(self, params: SamplingParams):
        self.params = params
        self.generator = None
        if params.seed is not None:
            self.generator = torch.Generator().manual_seed(params.seed)

    def choose(self, logits: torch.Tensor, generated: list[int]) -> int:
        p = self.params
        logits = logits.float()
        if p.logit_bias:
            ids = torch.tensor(list(p.logit_bias), dtype=torch.long)
            logits[ids] += torch.tensor(list(p.logit_bias.values()))
        if generated and (p.presence_penalty or p.frequency_penalty):
            ids, counts = torch.tensor(generated).unique(return_counts=True)
            logits[ids] -= p.frequency_penalty * counts.float() + p.presence_penalty
        if p.greedy:
            return int(torch.argmax(logits))
        probs = torch.softmax(logits / p.temperature, dim=-1)
        if p.top_p < 1.0:
            sorted_probs, order = torch.sort(probs, descending=True)
            cumulative = torch.cumsum(sorted_probs, dim=-1)
            # Keep the smallest prefix whose mass reaches top_p (the first token always stays).
            sorted_probs[(cumulative - sorted_probs) >= p.top_p] = 0.0
            probs = torch.zeros_like(probs).scatter(0, order, sorted_probs)
        return int(torch.multinomial(probs, 1, generator=self.generator))
