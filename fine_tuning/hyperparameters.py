"""Hyperparameters: what a job may set, their ranges, and how "auto" is resolved.

The "auto" rules were checked on the demo model by bench/fine_tuning_auto_grid.py (figures in
bench/README.md): with them, 30 examples teaching one made-up fact are learned — the model states
the fact for a phrasing it never saw — in about a minute on two CPU cores.

- batch_size counts examples, as OpenAI's does (the trainer puts a step's examples side by side in
  one row, which never changes what a step is): steps per epoch = ceil(examples / batch_size).
  "auto": about 0.2 % of the examples, between 1 and 32.
- n_epochs "auto": 3, scaled so that examples x epochs falls within [100, 25000], clamped to
  1-25 (OpenAI's documented rule).
- learning_rate_multiplier "auto": 1.0; the learning rate is BASE_LEARNING_RATE x multiplier,
  with BASE_LEARNING_RATE = 2e-4.
- LoRA extension: lora_r (default 8), lora_alpha (default 2 x r), lora_dropout (default 0.05),
  lora_target_modules (default: the base model's catalog default when its entry names one, else
  "all-linear": every linear layer of the transformer blocks, as Together defaults to; with only
  q_proj and v_proj the grid's batch-4 run did not learn the fact).
- max_seq_len: the longest example, in tokens (longer ones are cut), default min(1024, the model's
  context length).
- Without a validation file, jobs of 100 examples or more hold 10 % out (10 to 1,000) to measure
  the model before and after (fine_tuning/trainer/data.py, split_validation).
"""

from __future__ import annotations

import math
import re

BASE_LEARNING_RATE = 2e-4
ALL_LINEAR = "all-linear"  # PEFT's name for every linear layer but the output head
KEYS = {
    "n_epochs",
    "batch_size",
    "learning_rate_multiplier",
    "lora_r",
    "lora_alpha",
    "lora_dropout",
    "lora_target_modules",
    "max_seq_len",
}
MODULE_NAME = re.compile(r"^[A-Za-z0-9_.]{1,64}$")


class HyperparameterError(ValueError):
    def __init__(self, message: str, param: str):
        super().__init__(message)
        self.message, self.param = message, param


def _number(raw: dict, key: str, low, high, kind=int):
    value = raw.get(key, "auto")
    if value == "auto":
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and int(value) != value):
        raise HyperparameterError(f"{key} must be 'auto' or a{'n integer' if kind is int else ' number'}.", key)
    if not low <= value <= high:
        raise HyperparameterError(f"{key} must be between {low} and {high}, got {value}.", key)
    return kind(value)


def resolve(raw: dict, *, examples: int, context_length: int, default_targets: list[str]) -> dict:
    raw = dict(raw or {})
    unknown = set(raw) - KEYS
    if unknown:
        name = sorted(unknown)[0]
        raise HyperparameterError(f"Unknown hyperparameter {name!r}; accepted: {', '.join(sorted(KEYS))}.", name)
    n_epochs = _number(raw, "n_epochs", 1, 50)
    if n_epochs is None:
        n_epochs = 3
        if examples * n_epochs < 100:
            n_epochs = min(25, math.ceil(100 / max(examples, 1)))
        elif examples * n_epochs > 25000:
            n_epochs = max(1, 25000 // examples)
    batch_size = _number(raw, "batch_size", 1, 256) or max(1, min(32, round(examples * 0.002)))
    multiplier = _number(raw, "learning_rate_multiplier", 1e-4, 100.0, float) or 1.0
    lora_r = _number(raw, "lora_r", 1, 256) or 8
    lora_alpha = _number(raw, "lora_alpha", 1, 1024) or 2 * lora_r
    dropout = raw.get("lora_dropout", "auto")
    dropout = 0.05 if dropout == "auto" else _number(raw, "lora_dropout", 0.0, 0.9, float)
    targets = raw.get("lora_target_modules", "auto")
    if targets == "auto":
        targets = list(default_targets) or ALL_LINEAR
    elif targets == ALL_LINEAR:
        pass
    elif (
        not isinstance(targets, list)
        or not targets
        or not all(isinstance(t, str) and MODULE_NAME.match(t) for t in targets)
    ):
        raise HyperparameterError(
            f"lora_target_modules must be 'auto', '{ALL_LINEAR}' or a list of module names.", "lora_target_modules"
        )
    max_seq_len = _number(raw, "max_seq_len", 16, context_length) or min(1024, context_length)
    return {
        "n_epochs": n_epochs,
        "batch_size": batch_size,
        "learning_rate_multiplier": multiplier,
        "lora_r": lora_r,
        "lora_alpha": lora_alpha,
        "lora_dropout": dropout,
        "lora_target_modules": targets,
        "max_seq_len": max_seq_len,
    }


def estimated_tokens(report: dict, hyperparameters: dict) -> int:
    """Billable training tokens ~ epochs x sum of min(max_seq_len, tokens per example)."""
    per_epoch = report.get("total_tokens", 0)
    longest = report.get("max_example_tokens", 0)
    if longest > hyperparameters["max_seq_len"] and report.get("examples"):
        per_epoch = min(per_epoch, hyperparameters["max_seq_len"] * report["examples"])
    return per_epoch * hyperparameters["n_epochs"]


MAX_ACCELERATORS = 8  # data-parallel on one node


def accelerators(value) -> int:
    """How many accelerators of one node a job trains on (data-parallel); "auto" or absent: 1."""
    if value is None or value == "auto":
        return 1
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_ACCELERATORS:
        raise HyperparameterError(f"accelerators must be 'auto' or 1 to {MAX_ACCELERATORS}.", "accelerators")
    return value


def memory_per_accelerator(parameters: int | None, hyperparameters: dict, accelerators: int) -> int:
    """A coarse upper bound of the memory a job needs on each accelerator, so the scheduler does not
    place it where it cannot run: the weights in 32-bit floats, a quarter more for the adapter, its
    gradients, the optimizer and workspace, and activations of the step's tokens on this
    accelerator (about 100 x sqrt(weights) bytes a token without recomputation: 34 x hidden x
    layers 16-bit values, with hidden x layers ~ sqrt(weights) for models of usual shape). 0 when
    the model's size is not known."""
    if not parameters:
        return 0
    tokens = tokens_per_accelerator(hyperparameters, accelerators)
    return int(parameters * 4 * 1.25 + tokens * 100 * math.sqrt(parameters))


def tokens_per_accelerator(hyperparameters: dict, accelerators: int) -> int:
    """The most tokens one accelerator holds in a step: its share of the batch, each example full."""
    return math.ceil(hyperparameters["batch_size"] / max(accelerators, 1)) * hyperparameters["max_seq_len"]
