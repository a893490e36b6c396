"""The sampler on hostile-but-valid parameters: it always returns a token of the vocabulary and
never raises (one row's exception used to fail the whole batch of every tenant)."""

import pytest
import torch

from serving.runtime.sampling import Sampler, SamplingParams

VOCAB = 1000


def logits(kind: str = "normal", dtype=torch.float32) -> torch.Tensor:
    values = torch.randn(VOCAB, generator=torch.Generator().manual_seed(0)) * 8
    if kind == "nan":
        values[::7] = float("nan")
    elif kind == "inf":
        values[3], values[5] = float("inf"), float("-inf")
    elif kind == "huge":
        values[11] = 3e38
    return values.to(dtype)


HOSTILE = {
    "denormal temperature": {"temperature": 5e-324},
    "tiny temperature": {"temperature": 1e-30},
    "temperature at the greedy threshold": {"temperature": 1e-5},
    "tiny top_p": {"top_p": 1e-300, "temperature": 2.0},
    "extreme logit_bias and small temperature": {
        "temperature": 1e-4,
        "logit_bias": {i: (100.0 if i % 2 else -100.0) for i in range(VOCAB)},
    },
    "everything suppressed": {"logit_bias": {i: -100.0 for i in range(VOCAB)}},
    "extreme penalties": {"presence_penalty": -2.0, "frequency_penalty": -2.0, "temperature": 1e-3},
    "seed beyond 64 bits": {"seed": 2**70},
    "most negative seed": {"seed": -(2**63)},
}


@pytest.mark.parametrize("kind", ["normal", "nan", "inf", "huge"])
@pytest.mark.parametrize("name", list(HOSTILE))
def test_hostile_parameters_always_give_a_token(name, kind):
    sampler = Sampler(SamplingParams(max_tokens=8, **HOSTILE[name]))
    generated = []
    for _ in range(4):
        token = sampler.choose(logits(kind), generated)
        assert 0 <= token < VOCAB
        generated.append(token)


def test_half_precision_logits_are_not_modified_in_place():
    shared = logits(dtype=torch.float16)
    before = shared.clone()
    Sampler(SamplingParams(max_tokens=1, logit_bias={1: 50.0}, presence_penalty=2.0)).choose(shared, [1, 2])
    assert torch.equal(shared, before)


def test_tiny_temperatures_are_greedy_and_normal_ones_still_sample():
    values = logits()
    best = int(torch.argmax(values))
    assert Sampler(SamplingParams(max_tokens=1, temperature=1e-30)).choose(values, []) == best
    flat = torch.zeros(VOCAB)
    draws = {Sampler(SamplingParams(max_tokens=1, seed=s)).choose(flat, []) for s in range(20)}
    assert len(draws) > 10  # temperature 1 over a flat distribution: sampled, not greedy


def test_seeded_draws_repeat():
    draw = [Sampler(SamplingParams(max_tokens=1, seed=2**70)).choose(logits(), []) for _ in range(2)]
    assert draw[0] == draw[1]
