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
import threading
import time
from collections import deque
from pathlib import Path

from django.conf import settings
from django.core.files.storage import default_storage

from compute import allocations, worker_signals
from compute import services as compute
from compute.processes import die_with_parent, trainer_across
from compute.processes import trainer as trainer_argv
from fine_tuning import jobs, retention
from fine_tuning.hyperparameters import BASE_LEARNING_RATE
from fine_tuning.models import Checkpoint, FineTuningJob
from tenancy import scope
from tenancy.models import Organization

log = logging.getLogger("fine_tuning.runner")
STOP_CHECK_SECONDS = 2.0  # how soon a cancel or pause reaches the trainer
Status = FineTuningJob.Status


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def job_dir(job: FineTuningJob) -> Path:
    return retention.work_dir(job.pk)


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


def trainer_env() -> dict[str, str]:
    """The environment a trainer runs in, here or on another node of its job (given to that
    node's agent, which adds its own devices and network interface)."""
    root = Path(settings.REPO_DIR)
    return {"PYTHONPATH": os.pathsep.join([str(root / "platform"), str(root)])}


def _spawn(
    *args: str, processes: int = 1, devices: list[int] | None = None, launcher: list[str] | None = None
) -> subprocess.Popen:
    root = Path(settings.REPO_DIR)
    env = {**os.environ, **trainer_env()}
    if settings.COMPUTE_NODE_INTERFACE:  # where gloo reaches the other nodes of a job across nodes
        env["GLOO_SOCKET_IFNAME"] = settings.COMPUTE_NODE_INTERFACE
    if devices is not None and compute.this_node().accelerator != "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ",".join(str(d) for d in devices)  # the accelerators allocated to it
    # Data-parallel: one trainer per accelerator (trainer/distributed.py), on one node or several.
    launcher = launcher or trainer_argv(processes)
    # The trainer dies with the worker: a killed worker must not leave a trainer writing the
    # job's checkpoints while another worker resumes it.
    return subprocess.Popen(
        [*launcher, *args],
        cwd=root,
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        bufsize=1,
        preexec_fn=die_with_parent(signal.SIGKILL),
    )


_warm: subprocess.Popen | None = None


def warm_up() -> None:
    """Start a trainer that imports torch, transformers and peft now and then waits for a job, so
    the next job skips those seconds. One per worker; a job takes it and a new one is started."""
    global _warm
    if _warm is None or _warm.poll() is not None:
        _warm = _spawn("--wait")


def start_trainer(config: Path, processes: int = 1, devices: list[int] | None = None) -> subprocess.Popen:
    global _warm
    if processes > 1 or (devices and devices != [0]):
        return _spawn("--config", str(config), processes=processes, devices=devices)
    warm, _warm = _warm, None
    if warm is not None and warm.poll() is None:
        try:
            warm.stdin.write(f"{config}\n")
            warm.stdin.flush()
            return warm
        except OSError:
            warm.kill()
    return _spawn("--config", str(config))


def start_gang(config: Path, gang: list) -> subprocess.Popen:
    """A job across nodes: this (the leading) node's torchrun, and on every other node of its gang
    the same command with that node's rank, for its agent to run (the agents start it within a
    second; torchrun waits for every node at its rendezvous)."""
    leader = gang[0]
    with socket.socket() as probe:  # the rendezvous' port, on the address the other nodes reach
        probe.bind((leader.node.address, 0))
        port = probe.getsockname()[1]
    each = len(leader.devices)

    def across(rank: int) -> list[str]:
        return trainer_across(each, nodes=len(gang), rank=rank, master=leader.node.address, port=port)

    for rank, allocation in enumerate(gang[1:], start=1):
        allocations.set_launch(allocation.pk, [*across(rank), "--config", str(config)], trainer_env())
    return _spawn("--config", str(config), launcher=across(0), devices=list(leader.devices))


def _pump(stream, lines: queue.Queue) -> None:
    for line in stream:
        lines.put(line)
    lines.put(None)


def run_next(worker: str | None = None) -> list[str]:
    """What a woken GPU worker does: claim the job the pool's policy gives its node, run it, and
    again, until nothing fits here. Returns the ids of the jobs it ran."""
    worker = worker or worker_name()
    node = compute.this_node()
    ran = []
    while (job := jobs.claim_next(worker, node)) is not None:
        with scope.organization(job.organization_id):
            _run_taken(job.pk, worker)
        ran.append(job.pk)
    return ran


def run(job_id: str, worker: str | None = None) -> str:
    """Run this job if this worker can claim it (outside the claim order). Returns the job's status
    afterwards."""
    worker = worker or worker_name()
    if not jobs.claim(job_id, worker, compute.this_node()):
        return "not claimed"
    return _run_taken(job_id, worker)


def _run_taken(job_id: str, worker: str) -> str:
    job = FineTuningJob.all_orgs.select_related("base_model", "training_file", "validation_file").get(pk=job_id)
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
    resumed = job.attempts > 1 or job.preemptions > 0
    jobs.event(
        job.pk,
        job.organization_id,
        "Fine-tuning job resumed from its last checkpoint" if resumed else "Fine-tuning job started",
    )
    gang = allocations.gang_of(job.pk)
    if len(gang) > 1:
        process = start_gang(write_config(job), gang)
    else:
        process = start_trainer(write_config(job), job.accelerators, allocations.devices_of(job.pk))
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=_pump, args=(process.stdout, lines), daemon=True).start()
    stderr_tail: deque[str] = deque(maxlen=50)  # the last lines, for a failure message
    threading.Thread(target=stderr_tail.extend, args=(process.stderr,), daemon=True).start()
    renew_every = max(1.0, settings.FINE_TUNING_LEASE_SECONDS / 3)
    try:
        ended = _supervise(job, worker, process, lines, renew_every)
    finally:
        if process.poll() is None:
            # The supervision itself failed (say the database went away): never leave a trainer
            # running unsupervised while the reaper hands the job to another worker.
            process.kill()
            process.wait()
    if ended is None:
        return "lease lost"
    code, done, last_error, stop_sent = ended
    if code != 0 and not last_error:
        # What went wrong on our side (a traceback, paths) is the operator's, not the tenant's.
        log.error("trainer of %s exited %s: %s", job.pk, code, "".join(list(stderr_tail)[-20:]).strip()[-4000:])
    interrupted = ""
    if code != 0 and not last_error and not stop_sent:
        if len(gang) > 1:
            interrupted = f"its run across {len(gang)} nodes stopped (a node or its part of the run failed)"
        elif code < 0:
            interrupted = f"its trainer was killed (signal {-code}), not by anything in the job"
    return _finish(job, worker, code, done, last_error or "", stop_sent, interrupted)


def _supervise(job: FineTuningJob, worker: str, process, lines: queue.Queue, renew_every: float):
    """Follow the trainer to its end: record its lines, renew the lease, pass on cancel and pause.
    Returns (exit code, done line, last error, stop sent), or None when this worker lost the lease
    (the caller then stops the trainer)."""
    next_renewal, stop_sent, last_error, done = time.monotonic() + renew_every, "", None, None
    next_stop_check = time.monotonic() + STOP_CHECK_SECONDS
    while True:
        try:
            line = lines.get(timeout=1.0)
        except queue.Empty:
            line = ""
        if line is None:
            return process.wait(), done, last_error, stop_sent
        message = _message(line)
        if message:
            if message.get("type") == "error":
                # Only an error about the tenant's own data is shown to them; any other is logged.
                if message.get("public"):
                    last_error = str(message.get("message") or "")[:500]
                else:
                    log.error("trainer of %s reported: %s", job.pk, message.get("message"))
            done = message if message.get("type") == "done" else done
            if not _record(job, message, worker):
                break
        if time.monotonic() >= next_renewal:
            next_renewal = time.monotonic() + renew_every
            if not jobs.renew(job.pk, worker):
                break
        if not stop_sent and time.monotonic() >= next_stop_check:
            next_stop_check = time.monotonic() + STOP_CHECK_SECONDS
            wanted = FineTuningJob.all_orgs.filter(pk=job.pk).values_list("stop_requested", flat=True).first()
            if not wanted and allocations.preempt_reason(job.pk) is not None:
                wanted = "preempt"
            if wanted:  # cancel, pause or preempt: the trainer checkpoints and exits after its current step
                process.send_signal(signal.SIGTERM)
                stop_sent = wanted
    log.warning("lost the lease of %s; stopping its trainer", job.pk)
    return None


def _message(line: str) -> dict | None:
    if not line.startswith("{"):
        return None
    try:
        message = json.loads(line)
    except json.JSONDecodeError:
        return None
    return message if isinstance(message, dict) else None


def _record(job: FineTuningJob, message: dict, worker: str) -> bool:
    """Record one trainer line; False if this worker no longer holds the job's lease (then nothing
    is written: the run the reaper gave the job to owns its events, checkpoints and progress)."""
    kind = message.get("type")
    org = job.organization_id
    if kind != "metrics" and not jobs.holds_lease(job.pk, worker):  # metrics: guarded in their UPDATE
        return False
    if kind == "started":
        jobs.event(
            job.pk,
            org,
            f"Training {message['total_steps']} steps on {message['examples']} examples"
            + (f" in {message['precision']}" if message.get("precision") else "")
            + (f", resuming after step {message['resumed_from']}" if message.get("resumed_from") else ""),
            data={
                k: message[k]
                for k in ("total_steps", "examples", "resumed_from", "model_load_seconds", "precision")
                if k in message
            },
        )
    elif kind == "metrics":
        if not jobs.record_progress(
            job.pk,
            worker,
            progress=message["step"] / message["total_steps"],
            trained_tokens=message["trained_tokens"],
            train_seconds=message["train_seconds"],
            eta_seconds=message.get("eta_seconds"),
        ):
            return False
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
    elif kind == "validation_split":
        jobs.record_evaluation(job.pk, {"validation": {"source": "split", "examples": message["held_out"]}})
        jobs.event(
            job.pk,
            org,
            f"No validation file: {message['held_out']} of the training examples are held out to measure the "
            f"model before and after ({message['training']} train)",
            data=message,
        )
    elif kind == "evaluation":
        base, tuned = message["base"], message["fine_tuned"]
        validation = {"source": message["source"], "examples": message["examples"]}
        jobs.record_evaluation(job.pk, {"validation": validation, "base": base, "fine_tuned": tuned})
        jobs.event(
            job.pk,
            org,
            f"Validation loss {base['valid_loss']:.4f} (base model) -> {tuned['valid_loss']:.4f} (fine-tuned); token "
            f"accuracy {base['valid_mean_token_accuracy']:.1%} -> {tuned['valid_mean_token_accuracy']:.1%}",
            kind="metrics",
            data=message,
        )
    elif kind == "warning":
        jobs.event(job.pk, org, message["message"], level="warning", data={"code": message.get("code")})
    elif kind == "error" and message.get("public"):  # the others are the operator's (logged above)
        jobs.event(job.pk, org, f"Trainer error: {message['message']}", level="error")
    return True


def _finish(
    job: FineTuningJob, worker: str, code: int, done: dict | None, error: str, stop: str, interrupted: str = ""
) -> str:
    """Publish the adapter of a successful run (copied before any lock is taken), then let the job's
    state machine end the run."""
    outcome = jobs.Outcome(code=code, stop=stop, error=error, interrupted=interrupted)
    if code == 0 and done:
        outcome = jobs.Outcome(
            code=0,
            trained_tokens=done["trained_tokens"],
            train_seconds=done["train_seconds"],
            peak_memory_bytes=done.get("peak_memory_bytes"),
            fine_tuned_model=_publish(job, Path(done["adapter_dir"])),
        )
    return jobs.finish(job.pk, worker=worker, outcome=outcome)


def _publish(job: FineTuningJob, adapter: Path) -> str:
    """Copy the adapter into the store the runtimes load from (staged, then renamed into place, so
    a runtime never sees half an adapter); the model's id. Registering it is the job's finish."""
    destination = settings.ADAPTER_STORE / job.pk
    staging = settings.ADAPTER_STORE / f".staging-{job.pk}-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(adapter, staging)
    shutil.rmtree(destination, ignore_errors=True)
    staging.rename(destination)
    slug = Organization.objects.get(pk=job.organization_id).slug
    return f"ft:{job.base_model_id}:{slug}:{job.suffix}:{job.pk.removeprefix('ftjob-')[:8]}"
