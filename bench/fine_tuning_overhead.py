"""Fine-tuning through the platform vs the bare trainer, in one run, on the real demo model:

1. training throughput (tokens/s over the wall time from the first to the last step) of a
   platform job — a real Celery worker running the trainer, events and checkpoints written to
   the database — against the bare trainer on the very same configuration (goal: <= 5 % overhead);
2. time from job creation to the first training step on an idle worker — until the trainer
   starts step 1, its "started" line — against the trainer's own model-load time (goal: model
   load + 2 s). The duration of step 1 itself is reported beside it.

Run: .venv/bin/python bench/fine_tuning_overhead.py  (uses DATABASE_URL/REDIS_URL when set,
otherwise a temporary embedded installation)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "platform"), str(ROOT)]
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "maas.settings")
os.environ.setdefault("MODEL_CACHE_DIR", str(ROOT / "var" / "models"))
if not os.environ.get("DATABASE_URL"):
    os.environ["VAR_DIR"] = tempfile.mkdtemp(prefix="bench-ft-")
os.environ.update(FINE_TUNING_CHECKPOINT_EVERY="5", LOG_LEVEL="WARNING")

import django  # noqa: E402

django.setup()

from django.conf import settings  # noqa: E402
from django.core.files.uploadedfile import SimpleUploadedFile  # noqa: E402
from django.core.management import call_command  # noqa: E402

from fine_tuning import jobs, services  # noqa: E402
from fine_tuning.models import FineTuningJob, JobEvent  # noqa: E402
from maas.celery import app  # noqa: E402
from tenancy import scope  # noqa: E402
from tenancy import services as tenancy  # noqa: E402
from tenancy.audit import Actor  # noqa: E402

# What a customer sends: the epochs, everything else "auto" (for 48 examples: batch 1, so every
# step writes its events for a small amount of work, the hardest case for the overhead).
HYPERPARAMETERS = {"n_epochs": 2}


def training_data(n: int = 48) -> SimpleUploadedFile:
    rows = [
        {
            "messages": [
                {"role": "user", "content": f"Summarise item {i} of the catalogue in one line."},
                {"role": "assistant", "content": f"Item {i} is a sturdy oak chair with a woven seat."},
            ]
        }
        for i in range(n)
    ]
    upload = SimpleUploadedFile("bench.jsonl", "".join(json.dumps(r) + "\n" for r in rows).encode())
    upload.sha256 = "0" * 64
    return upload


def rate(samples: list[tuple[float, int]]) -> float:
    """Tokens/s between the first and the last step, by wall clock."""
    (t0, n0), (t1, n1) = samples[0], samples[-1]
    return (n1 - n0) / (t1 - t0)


ROUNDS = int(os.environ.get("BENCH_ROUNDS", "2"))


def start_worker(env: dict) -> subprocess.Popen:
    from compute.processes import celery_worker

    worker = subprocess.Popen(
        celery_worker(["default", "gpu"], name=f"bench-{os.getpid()}@%h", loglevel="WARNING", pool="solo"),
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    time.sleep(10)  # up, idle, and its warm trainer has imported torch
    return worker


def platform_run(org, file, env: dict) -> dict:
    worker = start_worker(env)
    try:
        created = time.time()
        job = jobs.create(
            organization_id=org.pk,
            model="smollm2-135m-instruct",
            training_file=file.pk,
            seed=1,
            hyperparameters=HYPERPARAMETERS,
            actor=Actor(),
        )
        while FineTuningJob.objects.get(pk=job.pk).status not in FineTuningJob.FINISHED:
            time.sleep(0.5)
    finally:
        worker.terminate()  # and its warm trainer: the bare run gets the machine to itself
        worker.wait(30)
    job = FineTuningJob.objects.get(pk=job.pk)
    assert job.status == "succeeded", job.error
    metrics = list(JobEvent.objects.filter(job=job, type="metrics").order_by("created_at"))
    started = JobEvent.objects.get(job=job, message__startswith="Training ")
    samples = [(e.created_at.timestamp(), e.data["trained_tokens"]) for e in metrics if "trained_tokens" in e.data]
    return {
        "job": job,
        "rate": rate(samples),
        "first_step": started.created_at.timestamp() - created,
        "first_step_duration": metrics[0].created_at.timestamp() - started.created_at.timestamp(),
        "model_load": started.data["model_load_seconds"],
    }


def bare_run(job, env: dict) -> float:
    config = json.loads((settings.FINE_TUNING_WORK_DIR / "jobs" / job.pk / "config.json").read_text())
    config["output_dir"] = tempfile.mkdtemp(prefix="bench-bare-")
    config_path = Path(config["output_dir"]) / "config.json"
    config_path.write_text(json.dumps(config))
    samples = []
    trainer = subprocess.Popen(
        [sys.executable, "-m", "fine_tuning.trainer", "--config", str(config_path)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    for line in trainer.stdout:
        message = json.loads(line) if line.startswith("{") else {}
        if message.get("type") == "metrics":
            samples.append((time.time(), message["trained_tokens"]))
    trainer.wait()
    return rate(samples)


def mean(values) -> float:
    return sum(values) / len(values)


def main() -> None:
    call_command("migrate", verbosity=0)
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'platform'}{os.pathsep}{ROOT}"}
    app.conf.task_always_eager = False
    slug = f"bench{int(time.time())}"
    _, org = tenancy.sign_up(
        email=f"{slug}@example.com", password=os.urandom(12).hex(), organization_name=slug, actor=Actor()
    )
    with scope.organization(org.pk):
        file = services.upload_file(
            organization_id=org.pk, uploaded=training_data(), purpose="fine-tune", actor=Actor()
        )
        services.validate_file(file.pk)
        platform, bare = [], []
        for _ in range(ROUNDS):  # alternate, so that drift of the machine hits both alike
            platform.append(platform_run(org, file, env))
            bare.append(bare_run(platform[-1]["job"], env))
    platform_rate, bare_rate = mean([p["rate"] for p in platform]), mean(bare)
    first = platform[-1]
    figures = {
        "rounds": ROUNDS,
        "steps_per_run": JobEvent.all_orgs.filter(job=first["job"], type="metrics").count(),
        "hyperparameters": first["job"].hyperparameters,
        "trained_tokens": first["job"].trained_tokens,
        "platform_tokens_per_s": [round(p["rate"], 1) for p in platform],
        "bare_trainer_tokens_per_s": [round(b, 1) for b in bare],
        "platform_overhead_percent": round(100 * (1 - platform_rate / bare_rate), 2),
        "create_to_first_step_s": [round(p["first_step"], 2) for p in platform],
        "model_load_s": [p["model_load"] for p in platform],
        "create_to_first_step_minus_model_load_s": [round(p["first_step"] - p["model_load"], 2) for p in platform],
        "first_step_duration_s": [round(p["first_step_duration"], 2) for p in platform],
        "effective_training_time": [p["job"].effective_training_time for p in platform],
    }
    print(json.dumps(figures, indent=2))
    (ROOT / "bench" / "results" / "fine_tuning_overhead.json").write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
