"""Checkpoints the trainer can resume from, written by us: the LoRA adapter (PEFT's safetensors),
the optimizer's tensors (safetensors) and its scalars, the scheduler step, the RNG state and the
position in the data (JSON). Nothing is pickled, so resuming never executes stored code.

A checkpoint is written beside its final name and renamed into place; only directories with the
completion marker count, so a kill in the middle of a write leaves the previous one in force.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

MARKER = "trainer_state.json"


def directory(output_dir: Path) -> Path:
    return Path(output_dir) / "checkpoints"


def latest(output_dir: Path) -> Path | None:
    root = directory(output_dir)
    if not root.is_dir():
        return None
    complete = sorted(p for p in root.iterdir() if p.name.startswith("step-") and (p / MARKER).is_file())
    return complete[-1] if complete else None


def save(output_dir: Path, *, step: int, peft_model, optimizer, state: dict) -> Path:
    root = directory(output_dir)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step:06d}"
    staging = root / f".step-{step:06d}.{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    peft_model.save_pretrained(staging, safe_serialization=True)
    tensors, scalars = {}, {}
    for index, values in optimizer.state_dict()["state"].items():
        for name, value in values.items():
            if torch.is_tensor(value) and value.dim() > 0:
                tensors[f"{index}.{name}"] = value.contiguous()
            else:
                scalars[f"{index}.{name}"] = float(value)
    tensors["rng.torch"] = torch.get_rng_state()
    save_file(tensors, staging / "optimizer.safetensors")
    groups = [{k: v for k, v in group.items()} for group in optimizer.state_dict()["param_groups"]]
    (staging / MARKER).write_text(
        json.dumps({**state, "step": step, "optimizer_scalars": scalars, "param_groups": groups})
    )
    if final.exists():
        shutil.rmtree(final)
    os.rename(staging, final)
    return final


def restore(path: Path, *, peft_model, optimizer) -> dict:
    from peft.utils import set_peft_model_state_dict

    set_peft_model_state_dict(peft_model, load_file(path / "adapter_model.safetensors"))
    state = json.loads((path / MARKER).read_text())
    tensors = load_file(path / "optimizer.safetensors")
    torch.set_rng_state(tensors.pop("rng.torch"))
    per_param: dict[int, dict] = {}
    for key, value in tensors.items():
        index, name = key.split(".", 1)
        per_param.setdefault(int(index), {})[name] = value
    for key, value in state["optimizer_scalars"].items():
        index, name = key.split(".", 1)
        per_param.setdefault(int(index), {})[name] = torch.tensor(value)
    optimizer.load_state_dict({"state": per_param, "param_groups": state["param_groups"]})
    return state


def prune(output_dir: Path, keep: int = 2) -> None:
    """Keep the newest `keep` checkpoints on disk."""
    root = directory(output_dir)
    complete = sorted(p for p in root.iterdir() if p.name.startswith("step-") and (p / MARKER).is_file())
    for old in complete[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
