"""Running a claimed job: the trainer as a child process, its JSON lines turned into events,
checkpoints and progress, the lease renewed while it runs, cancel and pause honoured within
seconds, and on success the adapter published and the `ft:` model registered."""

from __future__ import annotations

import json
import logging
import os
import queue
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from datetime import timedelta
from pathlib import Path

from django.conf import settings
from django.core.files.storage import default_storage
from django.db import transaction
from django.utils import timezone

from catalog.models import FineTunedModel
from compute import services as compute
from compute import worker_signals
from fine_tuning import jobs
from fine_tuning.hyperparameters import BASE_LEARNING_RATE
from fine_tuning.models import Checkpoint, FineTuningJob
from tenancy.models import Organization

log = logging.getLogger("fine_tuning.runner")
STOP_CHECK_SECONDS = 2.0  # how soon a cancel or pause reaches the trainer
Status = FineTuningJob.Status


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def job_dir(job: FineTuningJob) -> Path:
    return settings.FINE_TUNING_WORK_DIR / "jobs" / job.pk


def write_config(job: FineTuningJob) -> Path:
    h = job.hyperparameters
    config = {
        "model_source": job.base_model.source,
        "cache_dir": str(settings.MODEL_CACHE_DIR),
        "chat_template": job.base_model.chat_template or None,
        "training_file": default_storage.path(job.training_file.storage_key),
        "validation_file": default_storage.path(job.validation_file.storage_key) if job.validation_file else None,
        "output_dir": str(job_dir(job)),
        "n_epochs": h["n_epochs"],
        "batch_size": h["batch_size"],
        "learning_rate": BASE_LEARNING_RATE * h["learning_rate_multiplier"],
        "max_seq_len": h["max_seq_len"],
        "seed": job.seed,
        "checkpoint_every": settings.FINE_TUNING_CHECKPOINT_EVERY,
        "eval_every": settings.FINE_TUNING_CHECKPOINT_EVERY,
        "lora": {
            "r": h["lora_r"],
            "alpha": h["lora_alpha"],
            "dropout": h["lora_dropout"],
            "target_modules": h["lora_target_modules"],
        },
    }
    path = job_dir(job) / "config.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(config, indent=2))
    return path


def _die_with_parent() -> None:
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def _spawn(*args: str) -> subprocess.Popen:
    root = Path(settings.REPO_DIR)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root / "platform"), str(root)])}
    # The trainer dies with the worker: a killed worker must not leave a trainer writing the
    # job's checkpoints while another worker resumes it.
    return subprocess.Popen(
        [sys.executable, "-m", "fine_tuning.trainer", *args],
        cwd=root,
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        bufsize=1,
        preexec_fn=_die_with_parent,
    )


_warm: subprocess.Popen | None = None


def warm_up() -> None:
    """Start a trainer that imports torch, transformers and peft now and then waits for a job, so
    the next job skips those seconds. One per worker; a job takes it and a new one is started."""
    global _warm
    if _warm is None or _warm.poll() is not None:
        _warm = _spawn("--wait")


def start_trainer(config: Path) -> subprocess.Popen:
    global _warm
    warm, _warm = _warm, None
    if warm is not None and warm.poll() is None:
        try:
            warm.stdin.write(f"{config}\n")
            warm.stdin.flush()
            return warm
        except OSError:
            warm.kill()
    return _spawn("--config", str(config))


def _pump(stream, lines: queue.Queue) -> None:
    for line in stream:
        lines.put(line)
    lines.put(None)


def run(job_id: str, worker: str | None = None) -> str:
    """Run the job if this worker can claim it. Returns the job's status afterwards."""
    worker = worker or worker_name()
    if not jobs.claim(job_id, worker):
        return "not claimed"
    job = FineTuningJob.objects.select_related("base_model", "training_file", "validation_file").get(pk=job_id)
    registered = worker_signals.worker_name()
    if registered:
        compute.set_current_job(registered, job.pk)
    try:
        return _run_claimed(job, worker)
    finally:
        if registered:
            compute.set_current_job(registered, "")
            warm_up()  # for the next job on this worker


def _run_claimed(job: FineTuningJob, worker: str) -> str:
    resumed = job.attempts > 1
    jobs.event(
        job.pk,
        job.organization_id,
        "Fine-tuning job resumed from its last checkpoint" if resumed else "Fine-tuning job started",
    )
    process = start_trainer(write_config(job))
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=_pump, args=(process.stdout, lines), daemon=True).start()
    stderr_tail: deque[str] = deque(maxlen=50)  # the last lines, for a failure message
    threading.Thread(target=stderr_tail.extend, args=(process.stderr,), daemon=True).start()
    renew_every = max(1.0, settings.FINE_TUNING_LEASE_SECONDS / 3)
    next_renewal, stop_sent, last_error, done = time.monotonic() + renew_every, "", None, None
    next_stop_check = time.monotonic() + STOP_CHECK_SECONDS
    while True:
        try:
            line = lines.get(timeout=1.0)
        except queue.Empty:
            line = ""
        if line is None:
            break
        if line.startswith("{"):
            try:
                message = json.loads(line)
            except json.JSONDecodeError:
                message = None
            if message:
                last_error = message.get("message") if message.get("type") == "error" else last_error
                done = message if message.get("type") == "done" else done
                _record(job, message)
        if time.monotonic() >= next_renewal:
            next_renewal = time.monotonic() + renew_every
            if not jobs.renew(job.pk, worker):
                log.warning("lost the lease of %s; stopping its trainer", job.pk)
                process.kill()
                process.wait()
                return "lease lost"
        if not stop_sent and time.monotonic() >= next_stop_check:
            next_stop_check = time.monotonic() + STOP_CHECK_SECONDS
            wanted = FineTuningJob.all_orgs.filter(pk=job.pk).values_list("stop_requested", flat=True).first()
            if wanted:  # cancel or pause: the trainer checkpoints and exits after its current step
                process.send_signal(signal.SIGTERM)
                stop_sent = wanted
    code = process.wait()
    return _finish(job, worker, code, done, last_error or "".join(list(stderr_tail)[-5:]).strip()[-500:], stop_sent)


def _record(job: FineTuningJob, message: dict) -> None:
    kind = message.get("type")
    org = job.organization_id
    if kind == "started":
        jobs.event(
            job.pk,
            org,
            f"Training {message['total_steps']} steps on {message['examples']} examples"
            + (f", resuming after step {message['resumed_from']}" if message.get("resumed_from") else ""),
            data={
                k: message[k] for k in ("total_steps", "examples", "resumed_from", "model_load_seconds") if k in message
            },
        )
    elif kind == "metrics":
        data = {
            k: message.get(k)
            for k in (
                "step",
                "total_steps",
                "train_loss",
                "train_mean_token_accuracy",
                "learning_rate",
                "tokens_per_second",
                "trained_tokens",
            )
        }
        jobs.event(
            job.pk,
            org,
            f"Step {message['step']}/{message['total_steps']}: training loss={message['train_loss']:.4f}",
            kind="metrics",
            data=data,
        )
        eta = message.get("eta_seconds")
        FineTuningJob.all_orgs.filter(pk=job.pk).update(
            progress=message["step"] / message["total_steps"],
            trained_tokens=message["trained_tokens"],
            train_seconds=message["train_seconds"],
            estimated_finish=timezone.now() + timedelta(seconds=eta) if eta is not None else None,
        )
    elif kind == "validation":
        jobs.event(
            job.pk,
            org,
            f"Step {message['step']}: validation loss={message['valid_loss']:.4f}",
            kind="metrics",
            data=message,
        )
    elif kind == "checkpoint":
        Checkpoint.all_orgs.update_or_create(
            organization_id=org,
            job_id=job.pk,
            step_number=message["step"],
            defaults={"metrics": message.get("metrics") or {}, "path": message["path"]},
        )
        jobs.event(job.pk, org, f"Checkpoint saved at step {message['step']}")
    elif kind == "error":
        jobs.event(job.pk, org, f"Trainer error: {message['message']}", level="error")


def _finish(job: FineTuningJob, worker: str, code: int, done: dict | None, error: str, stop: str) -> str:
    with transaction.atomic():
        row = FineTuningJob.objects.select_for_update().get(pk=job.pk)
        if row.lease_owner != worker or row.status != Status.RUNNING:
            return row.status  # someone else owns it now; their run decides
        now = timezone.now()
        row.lease_owner, row.lease_expires_at, row.stop_requested = "", None, ""
        if code == 0 and done:
            row.fine_tuned_model = _publish(row, Path(done["adapter_dir"]))
            row.status, row.finished_at, row.progress = Status.SUCCEEDED, now, 1.0
            row.trained_tokens, row.train_seconds = done["trained_tokens"], done["train_seconds"]
            jobs.event(row.pk, row.organization_id, f"New fine-tuned model created: {row.fine_tuned_model}")
            jobs.event(row.pk, row.organization_id, "The job has successfully completed")
        elif stop == "cancel":
            row.status, row.finished_at = Status.CANCELLED, now
            jobs.event(row.pk, row.organization_id, "Job cancelled")
        elif stop == "pause":
            row.status = Status.PAUSED
            jobs.event(row.pk, row.organization_id, "Job paused at its last checkpoint")
        else:
            row.status, row.finished_at = Status.FAILED, now
            row.error = {
                "code": "training_failed",
                "param": None,
                "message": f"Training failed (exit code {code}): {error or 'no message'}",
            }
            jobs.event(
                row.pk, row.organization_id, row.error["message"], level="error", data={"error_code": "training_failed"}
            )
        row.save()
        return row.status


def _publish(job: FineTuningJob, adapter: Path) -> str:
    """Copy the adapter into the store the runtimes load from, and register the model."""
    destination = settings.ADAPTER_STORE / job.pk
    if destination.exists():
        shutil.rmtree(destination)
    shutil.copytree(adapter, destination)
    slug = Organization.objects.get(pk=job.organization_id).slug
    model_id = f"ft:{job.base_model_id}:{slug}:{job.suffix}:{job.pk.removeprefix('ftjob-')[:8]}"
    FineTunedModel.all_orgs.update_or_create(
        id=model_id,
        defaults={
            "organization_id": job.organization_id,
            "base_model_id": job.base_model_id,
            "job_id": job.pk,
            "adapter_path": job.pk,
        },
    )
    return model_id
