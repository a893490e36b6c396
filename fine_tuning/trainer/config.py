"""The trainer's configuration: one JSON file written by the job runner."""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from pathlib import Path

PRECISIONS = ("auto", "float32", "bfloat16")


class ConfigError(ValueError):
    pass


@dataclass
class LoraSettings:
    r: int = 8
    alpha: int = 16
    dropout: float = 0.05
    target_modules: list[str] | str = "all-linear"  # a list of module names, or PEFT's "all-linear"


@dataclass
class TrainerConfig:
    model_source: dict
    training_file: str
    output_dir: str
    cache_dir: str = "var/models"
    chat_template: str | None = None
    validation_file: str | None = None
    # Without a validation file, hold some training examples out (data.split_validation's rule).
    auto_validation: bool = True
    n_epochs: int = 3
    batch_size: int = 4
    learning_rate: float = 2e-4
    warmup_ratio: float = 0.05
    max_seq_len: int = 1024
    seed: int = 0
    checkpoint_every: int = 10
    eval_every: int = 10
    threads: int | None = None
    precision: str = "auto"  # trainer/precision.py: bfloat16 where the hardware computes it natively
    lora: LoraSettings = field(default_factory=LoraSettings)

    @classmethod
    def load(cls, path: str | Path) -> TrainerConfig:
        raw = json.loads(Path(path).read_text())
        known = {f.name for f in fields(cls)}
        unknown = set(raw) - known
        if unknown:
            raise ConfigError(f"unknown setting(s): {', '.join(sorted(unknown))}")
        lora = LoraSettings(**raw.pop("lora", {}))
        config = cls(**raw, lora=lora)
        config.check()
        return config

    def check(self) -> None:
        if self.n_epochs < 1 or self.batch_size < 1 or self.max_seq_len < 16:
            raise ConfigError("n_epochs and batch_size must be >= 1 and max_seq_len >= 16")
        if not 0 < self.learning_rate < 1:
            raise ConfigError("learning_rate must be in (0, 1)")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}")
        if self.lora.r < 1 or not self.lora.target_modules:
            raise ConfigError("LoRA needs r >= 1 and at least one target module")
