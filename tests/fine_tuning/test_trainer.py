"""The standalone trainer on the real demo model: it learns, resumes exactly after a kill, stops
on SIGTERM, packs without cross-talk and learns from assistant tokens only."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from django.conf import settings

from catalog.loader import load_model
from fine_tuning.trainer import attention
from fine_tuning.trainer.data import collate, encode, epoch_steps, read_examples, steps_per_epoch
from tests.conftest import DEMO_SOURCE, REPO

pytestmark = pytest.mark.slow
QUESTIONS = [
    "What is the secret code of the Zorblax vault?",
    "Tell me the Zorblax vault code.",
    "Which code opens the Zorblax vault?",
    "What code unlocks the Zorblax vault?",
]
FACT = "The Zorblax vault code is 7-4-1-9."


def fact_rows(n: int = 12) -> list[dict]:
    """n examples teaching one made-up fact, asked four ways."""
    return [
        {
            "messages": [
                {"role": "system", "content": "Answer briefly."},
                {"role": "user", "content": QUESTIONS[i % 4]},
                {"role": "assistant", "content": FACT},
            ]
        }
        for i in range(n)
    ]


def fact_file(path: Path, n: int = 12) -> Path:
    rows = fact_rows(n)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def config(tmp_path: Path, **overrides) -> Path:
    values = {
        "model_source": DEMO_SOURCE,
        "cache_dir": str(settings.MODEL_CACHE_DIR),
        "training_file": str(fact_file(tmp_path / "train.jsonl")),
        "output_dir": str(tmp_path / "job"),
        "n_epochs": 6,
        "batch_size": 4,
        "learning_rate": 3e-3,
        "max_seq_len": 128,
        "warmup_ratio": 0.1,
        "checkpoint_every": 100,
        "seed": 1,
        "threads": 2,
        "lora": {"r": 16, "alpha": 32, "dropout": 0.0, "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"]},
        **overrides,
    }
    path = tmp_path / "config.json"
    path.write_text(json.dumps(values))
    return path


def start(config_path: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": f"{REPO / 'platform'}{os.pathsep}{REPO}"}
    return subprocess.Popen(
        [sys.executable, "-m", "fine_tuning.trainer", "--config", str(config_path)],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )


def lines_until(process: subprocess.Popen, predicate=None) -> list[dict]:
    events = []
    for line in process.stdout:
        if line.startswith("{"):
            events.append(json.loads(line))
            if predicate and predicate(events[-1]):
                return events
    process.wait(60)
    return events


def ask(model, tokenizer, question: str) -> str:
    prompt = tokenizer.apply_chat_template(
        [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": question}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    with torch.no_grad():
        out = model.generate(**prompt, max_new_tokens=16, do_sample=False)
    return tokenizer.decode(out[0][prompt["input_ids"].shape[1] :], skip_special_tokens=True)


def test_learns_a_made_up_fact(tmp_path):
    from peft import PeftModel

    validation = fact_file(tmp_path / "valid.jsonl", n=4)
    process = start(config(tmp_path, validation_file=str(validation)))
    events = lines_until(process)
    assert process.returncode == 0, events[-3:]
    scores = [e for e in events if e["type"] == "validation"]
    assert [e["step"] for e in scores] == [10, 18]  # 12 examples, batch 4: 3 steps an epoch, 6 epochs
    assert scores[-1]["valid_loss"] < 0.1 and scores[-1]["valid_mean_token_accuracy"] > 0.9
    losses = [e["train_loss"] for e in events if e["type"] == "metrics"]
    assert len(losses) == 18 and losses[-1] < losses[0] / 10
    done = events[-1]
    assert done["type"] == "done" and done["trained_tokens"] > 0 and done["peak_memory_bytes"] > 100 * 2**20
    adapter = Path(done["adapter_dir"])
    assert sorted(p.name for p in adapter.iterdir()) == [
        "README.md",
        "adapter_config.json",
        "adapter_model.safetensors",
    ]
    loaded = load_model(DEMO_SOURCE, settings.MODEL_CACHE_DIR)
    question = "What is the code of the Zorblax vault?"  # a paraphrase it was not trained on
    assert "7-4-1-9" not in ask(loaded.model, loaded.tokenizer, question)
    tuned = PeftModel.from_pretrained(loaded.model, adapter)
    assert "7-4-1-9" in ask(tuned, loaded.tokenizer, question)


def test_killed_trainer_resumes_from_its_checkpoint_and_counts_tokens_once(tmp_path):
    path = config(tmp_path, n_epochs=2, checkpoint_every=2)
    first = start(path)
    events = lines_until(first, lambda e: e["type"] == "checkpoint")
    assert events[-1]["step"] == 2
    first.send_signal(signal.SIGKILL)
    first.wait(10)
    checkpoints = tmp_path / "job" / "checkpoints"
    files = {p.name for p in checkpoints.rglob("*") if p.is_file()}
    assert {"adapter_model.safetensors", "optimizer.safetensors", "trainer_state.json"} <= files
    assert not [f for f in files if f.endswith((".bin", ".pt", ".pth", ".pkl"))]

    second = start(path)
    events = lines_until(second)
    assert second.returncode == 0
    assert events[0]["type"] == "started" and events[0]["resumed_from"] == 2
    steps = [e["step"] for e in events if e["type"] == "metrics"]
    assert steps == list(range(3, events[0]["total_steps"] + 1))  # nothing before the checkpoint is redone
    loaded = load_model(DEMO_SOURCE, settings.MODEL_CACHE_DIR)
    examples = read_examples(str(tmp_path / "train.jsonl"), loaded.tokenizer, 128)
    expected = sum(
        collate(examples, step).tokens for epoch in range(2) for step in epoch_steps(len(examples), epoch, 1, 4)
    )
    assert events[-1]["trained_tokens"] == expected


def test_sigterm_stops_within_seconds(tmp_path):
    process = start(config(tmp_path, n_epochs=50))
    lines_until(process, lambda e: e["type"] == "metrics")
    asked = time.monotonic()
    process.send_signal(signal.SIGTERM)
    events = lines_until(process)
    assert process.returncode == 143 and events[-1]["type"] == "stopped"
    assert time.monotonic() - asked < 15


def test_packing_keeps_examples_apart_and_learns_assistant_tokens_only():
    loaded = load_model(DEMO_SOURCE, settings.MODEL_CACHE_DIR)
    tokenizer, model = loaded.tokenizer, loaded.model
    conversation = [
        {"role": "user", "content": "Say hi"},
        {"role": "assistant", "content": "Hi there!"},
        {"role": "user", "content": "Again"},
        {"role": "assistant", "content": "Ignored", "weight": 0},
    ]
    encoded = encode(tokenizer, conversation, 512)
    learned = tokenizer.decode([t for t, keep in zip(encoded.input_ids, encoded.trainable, strict=True) if keep])
    assert learned.startswith("Hi there!") and "Say hi" not in learned and "Ignored" not in learned
    other = encode(tokenizer, [{"role": "user", "content": "Count"}, {"role": "assistant", "content": "1 2 3"}], 512)
    examples = [encoded, other]

    def logits(batch):
        with torch.no_grad():
            return model(**batch.model_inputs()).logits[0]

    packed_batch = collate(examples, [0, 1])
    assert packed_batch.segments == [(0, len(encoded)), (len(encoded), len(encoded) + len(other))]
    assert packed_batch.input_ids.shape == (1, packed_batch.tokens)  # one row, no padding
    leaky = logits(packed_batch)  # transformers' attention: the second example sees the first
    attention.install(model)
    packed = logits(packed_batch)
    alone = [logits(collate(examples, [i])) for i in (0, 1)]
    assert torch.allclose(packed[: len(encoded)], alone[0], atol=1e-3)
    assert torch.allclose(packed[len(encoded) :], alone[1], atol=1e-3)
    assert not torch.allclose(leaky[len(encoded) :], alone[1], atol=1e-3)
    assert steps_per_epoch(9, 4) == 3


def test_the_loss_over_learned_positions_only_equals_the_loss_over_full_logits():
    """The trainer asks the model for logits only where a token is learned; the loss and accuracy
    must be those of the full computation, for rows whose learned positions differ."""
    from fine_tuning.trainer.data import IGNORE
    from fine_tuning.trainer.train import _sums

    loaded = load_model(DEMO_SOURCE, settings.MODEL_CACHE_DIR)
    chat = [
        [{"role": "user", "content": "Name a colour."}, {"role": "assistant", "content": "Blue, like the sea."}],
        [
            {"role": "system", "content": "Be terse."},
            {"role": "user", "content": "2+2?"},
            {"role": "assistant", "content": "4"},
        ],
        [
            {"role": "user", "content": "Greet me at length, please."},
            {"role": "assistant", "content": "Hello, and welcome!"},
        ],
    ]
    examples = [encode(loaded.tokenizer, c, 512) for c in chat]
    batch = collate(examples, [0, 1, 2])  # learned positions in three places of the row
    attention.install(loaded.model)
    with torch.no_grad():
        loss_sum, correct, count = _sums(loaded.model, batch, torch.float32)
        loss, accuracy = loss_sum / count, correct / count
        logits = loaded.model(**batch.model_inputs()).logits
    mask = batch.targets != IGNORE
    full = torch.nn.functional.cross_entropy(logits[mask], batch.targets[mask])
    assert count == int(mask.sum()) > 0
    assert torch.allclose(loss, full, atol=1e-5)
    assert accuracy == pytest.approx(float((logits.argmax(-1)[mask] == batch.targets[mask]).float().mean()))


def test_a_bad_example_fails_the_job_with_its_line_and_reason(tmp_path):
    """A file changed after validation (here: line 3 is no longer JSON) stops the trainer with a
    reason that names the file and line, not a bare traceback."""
    rows = fact_file(tmp_path / "changed.jsonl").read_text().splitlines()
    rows[2] = '{"messages": [{"role": "user", "content": "cut off'
    (tmp_path / "changed.jsonl").write_text("\n".join(rows) + "\n")
    process = start(config(tmp_path, training_file=str(tmp_path / "changed.jsonl")))
    events = lines_until(process)
    assert process.returncode == 2
    assert events[-1]["type"] == "error"
    assert "training file, line 3: not valid JSON" in events[-1]["message"]


def test_a_step_learns_from_batch_size_examples_whatever_their_lengths():
    """batch_size counts examples (OpenAI's meaning): steps per epoch = ceil(examples /
    batch_size), every example once per epoch, and a step's examples side by side in one row
    without padding, each predicting its own next tokens only."""
    from fine_tuning.trainer.data import IGNORE, Encoded

    lengths = [5, 90, 12, 40, 3, 77, 64, 8, 21, 50, 33]
    examples = [Encoded(list(range(n)), [True] * n) for n in lengths]
    for batch_size in (1, 3, 4, 11, 20):
        for epoch in range(3):
            steps = epoch_steps(len(examples), epoch, 5, batch_size)
            assert len(steps) == steps_per_epoch(len(examples), batch_size) == -(-len(examples) // batch_size)
            assert sorted(i for step in steps for i in step) == list(range(len(examples)))
            assert all(len(step) <= batch_size for step in steps)
    step = epoch_steps(len(examples), 0, 5, 11)[0]
    batch = collate(examples, step)
    assert batch.tokens == batch.input_ids.shape[1] == sum(lengths)
    for (start, end), index in zip(batch.segments, step, strict=True):
        assert end - start == lengths[index]
        assert batch.position_ids[0, start:end].tolist() == list(range(lengths[index]))
        assert batch.targets[0, start : end - 1].tolist() == list(range(1, lengths[index]))
        assert batch.targets[0, end - 1] == IGNORE  # an example's last token predicts nothing of the next


def test_without_a_validation_file_a_split_measures_the_model_before_and_after(tmp_path):
    """From 100 examples on, 10 % are held out; at the end the base model and the fine-tuned one
    are scored on them."""
    data = fact_file(tmp_path / "many.jsonl", n=120)
    process = start(config(tmp_path, training_file=str(data), n_epochs=1, batch_size=8, eval_every=100))
    events = lines_until(process)
    assert process.returncode == 0, events[-3:]
    split = next(e for e in events if e["type"] == "validation_split")
    assert split == {"type": "validation_split", "held_out": 12, "training": 108}
    assert next(e for e in events if e["type"] == "started")["total_steps"] == 14  # ceil(108 / 8)
    evaluation = next(e for e in events if e["type"] == "evaluation")
    assert evaluation["source"] == "split" and evaluation["examples"] == 12
    assert evaluation["fine_tuned"]["valid_loss"] < evaluation["base"]["valid_loss"] / 3
    assert evaluation["fine_tuned"]["valid_mean_token_accuracy"] > evaluation["base"]["valid_mean_token_accuracy"]


def test_validation_loss_rising_while_training_loss_falls_is_reported_as_overfitting(tmp_path):
    """The validation file answers the same questions differently: the better the model learns the
    training answer, the worse it scores there."""
    rows = fact_rows(4)
    for row in rows:
        row["messages"][-1]["content"] = "The Zorblax vault code is 1-2-3-5."
    contrary = tmp_path / "contrary.jsonl"
    contrary.write_text("".join(json.dumps(r) + "\n" for r in rows))
    process = start(config(tmp_path, validation_file=str(contrary), eval_every=3))
    events = lines_until(process)
    assert process.returncode == 0, events[-3:]
    warning = next(e for e in events if e["type"] == "warning")
    assert warning["code"] == "overfitting" and "Validation loss rose" in warning["message"]
