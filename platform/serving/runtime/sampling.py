"""Choosing the next token for each row: penalties, logit bias, temperature, top-p, seeded draws.

Numerically safe for every request that passes validation: temperatures below GREEDY_BELOW are
greedy (dividing by them overflows), the arithmetic is float32 on clamped logits, and a row whose
distribution still comes out unusable falls back to its most likely token instead of raising
inside the shared engine step.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

# Below this a temperature is indistinguishable from greedy decoding and only risks overflow.
GREEDY_BELOW = 1e-5
# Logits beyond this carry no extra meaning (probabilities saturate far earlier); clamping keeps
# logits / GREEDY_BELOW finite in float32.
LOGIT_LIMIT = 1e4


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
    logprobs: int | None = None  # None: none reported; k: the chosen token's and the k most likely

    @property
    def greedy(self) -> bool:
        return self.temperature < GREEDY_BELOW


class Sampler:
    """Per-request sampling state; a seeded request draws from its own generator, so its output
    does not depend on what else is in the batch."""

    def __init__(self, params: SamplingParams):
        self.params = params
        self.generator = None
        if params.seed is not None:
            # Any 64-bit seed: torch takes the unsigned range, OpenAI's clients send signed ones.
            self.generator = torch.Generator().manual_seed(params.seed % 2**64)
        if params.logit_bias:
            self.bias_ids = torch.tensor(list(params.logit_bias), dtype=torch.long)
            self.bias_values = torch.tensor(list(params.logit_bias.values()), dtype=torch.float32)

    def choose(self, logits: torch.Tensor, generated: list[int], allowed: torch.Tensor | None = None) -> int:
        """The next token; only among `allowed` (a boolean mask) when a grammar constrains the row."""
        p = self.params
        # A private float32 copy: the batch's logits may be half precision and are shared.
        logits = torch.nan_to_num(logits.to(torch.float32, copy=True), nan=-LOGIT_LIMIT)
        logits.clamp_(-LOGIT_LIMIT, LOGIT_LIMIT)
        if p.logit_bias:
            logits[self.bias_ids] += self.bias_values
        if generated and (p.presence_penalty or p.frequency_penalty):
            ids, counts = torch.tensor(generated).unique(return_counts=True)
            logits[ids] -= p.frequency_penalty * counts.float() + p.presence_penalty
        if allowed is not None:
            logits.masked_fill_(~allowed, float("-inf"))
        best = int(torch.argmax(logits))
        if p.greedy:
            return best
        probs = torch.softmax(logits / p.temperature, dim=-1)
        if p.top_p < 1.0:
            sorted_probs, order = torch.sort(probs, descending=True)
            cumulative = torch.cumsum(sorted_probs, dim=-1)
            # Keep the smallest prefix whose mass reaches top_p (the first token always stays).
            sorted_probs[(cumulative - sorted_probs) >= p.top_p] = 0.0
            probs = torch.zeros_like(probs).scatter(0, order, sorted_probs)
        total = float(probs.sum())
        if not (total > 0.0 and torch.isfinite(probs).all()):
            return best
        return int(torch.multinomial(probs, 1, generator=self.generator))
