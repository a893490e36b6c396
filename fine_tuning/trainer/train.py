"""The training loop."""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

import torch

from catalog.loader import load_model
from fine_tuning.trainer import attention, checkpoint, distributed, dropout, precision
from fine_tuning.trainer.config import TrainerConfig
from fine_tuning.trainer.data import (
    IGNORE,
    ExampleError,
    collate,
    epoch_steps,
    pack,
    read_examples,
    split_validation,
    steps_per_epoch,
)

_reporting = True  # only the first process of a data-parallel run reports


def emit(kind: str, **data) -> None:
    if _reporting:
        print(json.dumps({"type": kind, **data}), flush=True)


class Stop:
    requested = False

    @classmethod
    def install(cls) -> None:
        def handler(signum, frame):
            cls.requested = True

        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGINT, handler)


def _sums(model, batch, dtype: torch.dtype):
    # Logits only where a token is learned (the assistant's replies): the output layer over the whole
    # vocabulary is a fifth of the model's work, and prompts need none of it. The model applies its
    # own final scaling or soft-capping to the positions it keeps. No KV cache: nothing decodes.
    keep = (batch.targets[0] != IGNORE).nonzero().squeeze(1)
    with precision.autocast(batch.input_ids.device, dtype):
        out = model(**batch.model_inputs(), logits_to_keep=keep, use_cache=False)
    logits = out.logits[0].float()
    targets = batch.targets[0, keep]
    # Sums, not means: a data-parallel step divides by the token count of the whole step.
    loss = torch.nn.functional.cross_entropy(logits, targets, reduction="sum")
    correct = (logits.argmax(-1) == targets).sum()
    return loss, float(correct), len(keep)


def _schedule(total_steps: int, warmup_ratio: float):
    warmup = max(1, int(total_steps * warmup_ratio))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup))

    return factor


EVAL_PASS_EXAMPLES = 8  # an evaluation forward pass takes up to this many longest examples' tokens


def _evaluate(model, examples, config, dtype) -> dict:
    total_loss = total_correct = total = 0.0
    model.eval()
    with torch.no_grad():
        for members in pack(examples, list(range(len(examples))), EVAL_PASS_EXAMPLES * config.max_seq_len):
            loss, correct, count = _sums(model, _device_batch(model, collate(examples, members)), dtype)
            total_loss += float(loss)
            total_correct += correct
            total += count
    model.train()
    return {"valid_loss": total_loss / max(total, 1), "valid_mean_token_accuracy": total_correct / max(total, 1)}


def _before_and_after(model, validation, config, dtype, valid_losses: list[float], train_losses: list[float]) -> None:
    """Did it help? The validation set scored by the base model (the adapter switched off) and by
    the fine-tuned one; and a warning when validation loss rose while training loss fell."""
    with model.disable_adapter():
        base = _evaluate(model, validation, config, dtype)
    tuned = _evaluate(model, validation, config, dtype)
    emit(
        "evaluation",
        source="file" if config.validation_file else "split",
        examples=len(validation),
        base={k: round(v, 5) for k, v in base.items()},
        fine_tuned={k: round(v, 5) for k, v in tuned.items()},
    )
    if len(valid_losses) >= 2:
        best = min(range(len(valid_losses)), key=valid_losses.__getitem__)
        if valid_losses[-1] > valid_losses[best] * 1.05 and train_losses[-1] < train_losses[best]:
            emit(
                "warning",
                code="overfitting",
                message=f"Validation loss rose from {valid_losses[best]:.4f} to {valid_losses[-1]:.4f} while "
                f"training loss fell from {train_losses[best]:.4f} to {train_losses[-1]:.4f}: the model may be "
                "memorising the training examples. Fewer epochs or more data may help.",
            )


def _device_batch(model, batch):
    device = next(model.parameters()).device
    return batch if device.type == "cpu" else distributed.World(device=device).to_device(batch)


def run(config: TrainerConfig) -> int:
    global _reporting
    Stop.install()
    world = distributed.join()
    _reporting = world.main
    try:
        return _train(config, world)
    finally:
        world.close()


def _train(config: TrainerConfig, world: distributed.World) -> int:
    if config.threads:
        torch.set_num_threads(config.threads)
    elif world.size > 1 and world.device.type == "cpu":
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // world.size))  # the node's cores, shared
    from peft import LoraConfig, get_peft_model
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    output = Path(config.output_dir)
    output.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(config.seed)
    # The first process loads (and, on a new node, dequantizes into the cache) before the others,
    # which then load the cached weights instead of each converting the model at once.
    if not world.main:
        world.barrier()
    loaded = load_model(config.model_source, Path(config.cache_dir), chat_template=config.chat_template)
    if world.main:
        world.barrier()
    tokenizer = loaded.tokenizer
    lora = LoraConfig(
        r=config.lora.r,
        lora_alpha=config.lora.alpha,
        lora_dropout=config.lora.dropout,
        target_modules=config.lora.target_modules,
        task_type="CAUSAL_LM",
    )
    model = get_peft_model(loaded.model, lora).to(world.device)
    dtype = precision.resolve(config.precision, world.device)
    precision.prepare(model, dtype)
    attention.install(model)
    shared_dropout = dropout.install(model, config.lora.dropout)
    model.train()
    parallel = world.wrap(model)  # the same module with gradients averaged across processes
    examples = read_examples(config.training_file, tokenizer, config.max_seq_len)
    validation = (
        read_examples(config.validation_file, tokenizer, config.max_seq_len, label="validation")
        if config.validation_file
        else []
    )
    if not examples:
        emit("error", message="no trainable examples in the training file", public=True)
        return 2
    if not validation and config.auto_validation:
        examples, validation = split_validation(examples, config.seed)
        if validation:
            emit("validation_split", held_out=len(validation), training=len(examples))
    per_epoch = steps_per_epoch(len(examples), config.batch_size)
    total_steps = per_epoch * config.n_epochs
    trained = [p for p in model.parameters() if p.requires_grad]
    # fused: one kernel updates every adapter tensor, instead of a dozen operations per tensor
    optimizer = torch.optim.AdamW(trained, lr=config.learning_rate, weight_decay=0.0, fused=True)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _schedule(total_steps, config.warmup_ratio))
    step, trained_tokens, train_seconds, resumed_from = 0, 0, 0.0, None
    last = checkpoint.latest(output)
    if last is not None:
        state = checkpoint.restore(last, peft_model=model, optimizer=optimizer)
        step, trained_tokens, train_seconds = state["step"], state["trained_tokens"], state["train_seconds"]
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, _schedule(total_steps, config.warmup_ratio), last_epoch=step - 1
        )
        resumed_from = step
    trainable = sum(p.numel() for p in trained)
    emit(
        "started",
        precision=str(dtype).removeprefix("torch."),
        total_steps=total_steps,
        examples=len(examples),
        resumed_from=resumed_from,
        trainable_parameters=trainable,
        model_load_seconds=round(loaded.seconds, 2),
    )
    steps: dict[int, list] = {}  # epoch -> its steps' examples
    metrics: dict = {}
    valid_losses: list[float] = []  # at each validation during this run, with the training loss then
    train_losses: list[float] = []
    saved_step = step  # the step the newest checkpoint on disk holds

    def save_checkpoint() -> None:
        nonlocal saved_step
        if world.main:  # one copy: every process holds the same adapter and optimizer state
            path = checkpoint.save(
                output,
                step=step,
                peft_model=model,
                optimizer=optimizer,
                state={"trained_tokens": trained_tokens, "train_seconds": train_seconds},
            )
            checkpoint.prune(output)
            emit("checkpoint", step=step, path=str(path), metrics=metrics)
        saved_step = step
        world.barrier()  # no process exits (and has torchrun stop the others) before it is written

    while step < total_steps:
        if world.any(Stop.requested):
            # Asked to stop (cancel, pause, preemption): keep the work done since the last checkpoint.
            if step != saved_step:
                save_checkpoint()
            emit("stopped", step=step)
            return 143
        epoch, index = divmod(step, per_epoch)
        if epoch not in steps:
            steps = {epoch: epoch_steps(len(examples), epoch, config.seed, config.batch_size)}
        mine, weighted = distributed.shard(steps[epoch][index], world)
        batch = world.to_device(collate(examples, mine))
        started = time.perf_counter()
        count = int((batch.targets != IGNORE).sum()) if weighted else 0
        step_count, step_tokens = world.sum(count, batch.tokens if weighted else 0)
        loss_sum, correct, _ = _sums(parallel, batch, dtype)
        # Averaged over the processes, these gradients are those of the whole step's mean token loss.
        (loss_sum * (world.size / max(step_count, 1) if weighted else 0.0)).backward()
        torch.nn.utils.clip_grad_norm_(trained, 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        if shared_dropout is not None:
            shared_dropout.forget()
        total_loss, total_correct = world.sum(
            loss_sum.detach().item() if weighted else 0.0, correct if weighted else 0.0
        )
        loss_value, accuracy = total_loss / max(step_count, 1), total_correct / max(step_count, 1)
        elapsed = time.perf_counter() - started
        step += 1
        batch_tokens = int(step_tokens)  # the step's tokens, counted once however many processes
        trained_tokens += batch_tokens
        train_seconds += elapsed
        rate = trained_tokens / train_seconds if train_seconds else 0.0
        emit(
            "metrics",
            step=step,
            total_steps=total_steps,
            epoch=round(step / per_epoch, 3),
            train_loss=round(loss_value, 5),
            train_mean_token_accuracy=round(accuracy, 4),
            learning_rate=scheduler.get_last_lr()[0],
            tokens_per_second=round(batch_tokens / elapsed, 1),
            trained_tokens=trained_tokens,
            train_seconds=round(train_seconds, 3),
            eta_seconds=round((total_steps - step) * train_seconds / max(step - (resumed_from or 0), 1), 1)
            if rate
            else None,
        )
        metrics = {"step": step, "train_loss": round(loss_value, 5), "train_mean_token_accuracy": round(accuracy, 4)}
        if world.main and validation and (step % config.eval_every == 0 or step == total_steps):
            scores = _evaluate(model, validation, config, dtype)
            metrics.update({k: round(v, 5) for k, v in scores.items()})
            emit("validation", **metrics)  # metrics carries the step
            valid_losses.append(metrics["valid_loss"])
            train_losses.append(metrics["train_loss"])
        if step % config.checkpoint_every == 0 and step < total_steps:
            save_checkpoint()
    if not world.main:
        return 0
    if validation:
        _before_and_after(model, validation, config, dtype, valid_losses, train_losses)
    adapter_dir = output / "adapter"
    model.save_pretrained(adapter_dir, safe_serialization=True)
    emit(
        "done",
        step=step,
        trained_tokens=trained_tokens,
        train_seconds=round(train_seconds, 3),
        adapter_dir=str(adapter_dir),
        metrics=metrics if total_steps else {},
        peak_memory_bytes=_peak_memory(world.device),
    )
    return 0


def _peak_memory(device: torch.device) -> int:
    """The most memory this process held on its accelerator: CUDA memory allocated, or on a CPU the
    process's peak resident size (interpreter and libraries included: what the node really gave)."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    import resource

    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024  # Linux reports KiB


def main(argv=None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m fine_tuning.trainer")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--config", help="JSON file written by the job runner")
    source.add_argument(
        "--wait",
        action="store_true",
        help="import everything, print a 'ready' line, then read the config path from stdin "
        "(a warm trainer: a job starts without paying for Python imports)",
    )
    args = parser.parse_args(argv)
    distributed.die_with_launcher()
    config_path = args.config
    if args.wait:
        import peft  # noqa: F401
        import transformers  # noqa: F401
        from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: F401

        emit("ready")
        config_path = sys.stdin.readline().strip()
        if not config_path:
            return 0  # released without a job
    try:
        config = TrainerConfig.load(config_path)
    except (OSError, ValueError, TypeError) as exc:
        emit("error", message=f"bad configuration: {exc}")
        return 2
    try:
        return run(config)
    except ExampleError as exc:
        emit("error", message=f"an example cannot be used: {exc}", public=True)
        return 2
    except Exception as exc:  # reported as a line the runner can show, then non-zero
        emit("error", message=f"{type(exc).__name__}: {exc}")
        raise


if __name__ == "__main__":
    sys.exit(main())
