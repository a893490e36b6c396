"""Fine-tuning jobs: creation (validated up front), the state machine, and the lease that makes
the job row — not the broker — the truth about who runs a job.

States: validating_files -> queued -> running -> succeeded | failed | cancelled, running <-> paused,
and running -> queued when an endpoint replica preempts it. A GPU worker pulls: it asks the pool's
policy (fine_tuning.queue, compute.policy) which queued job its node should take, locks that row
(skip_locked), takes accelerators for it (compute.allocations) and the lease in one transaction,
renews the lease while the trainer runs, and loses it if it stops renewing; the reaper then
requeues the job and the next claim resumes from the last checkpoint. So a job never runs twice at
once and is never lost with a worker; the broker's message only wakes a worker.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from billing import money, pricing
from billing import services as billing
from billing.budgets import InsufficientQuota
from catalog import selectors as catalog
from catalog import services as catalog_services
from catalog.models import BaseModel
from compute import allocations
from compute import services as compute_services
from fine_tuning import hyperparameters as hp
from fine_tuning import queue, retention
from fine_tuning.models import DatasetVersion, File, FineTuningJob, JobEvent
from tenancy import audit
from tenancy.audit import Actor
from tenancy.errors import NotFound
from tenancy.models import Organization
from tenancy.services import Conflict, ServiceError

Status = FineTuningJob.Status


class TooManyJobs(ServiceError):
    status = 429


class QuotaExceeded(ServiceError):
    status = 429


# A job's estimated cost stays reserved while it waits and runs; its ledger row at the end settles it.
TRAINING_HOLD_SECONDS = 30 * 24 * 3600


def event(
    job_id: str,
    organization_id: int,
    message: str,
    *,
    level: str = "info",
    kind: str = "message",
    data: dict | None = None,
) -> JobEvent:
    return JobEvent.all_orgs.create(
        job_id=job_id, organization_id=organization_id, message=message, level=level, type=kind, data=data
    )


def _training_file(organization_id: int, file_id, param: str) -> File:
    if not isinstance(file_id, str) or not file_id:
        raise ServiceError(f"'{param}' must be a file id.", "invalid_file", param)
    row = File.all_orgs.filter(pk=file_id, organization_id=organization_id, deleted_at=None).first()
    if row is None:
        raise NotFound(f"No such file: {file_id}.", "file_not_found", param)
    if row.purpose != File.Purpose.FINE_TUNE:
        raise ServiceError(f"File {file_id} has purpose {row.purpose!r}, not 'fine-tune'.", "invalid_file", param)
    if row.status == File.Status.UPLOADED:
        raise ServiceError(
            f"File {file_id} is still being validated; wait until its status is 'processed'.", "file_not_ready", param
        )
    if row.status == File.Status.ERROR:
        raise ServiceError(f"File {file_id} is invalid: {row.status_details}", "invalid_file", param)
    return row


def _method_hyperparameters(method, legacy) -> tuple[dict, dict]:
    if method is None:
        return {"type": "supervised", "supervised": {"hyperparameters": dict(legacy or {})}}, dict(legacy or {})
    if not isinstance(method, dict) or method.get("type") != "supervised":
        raise ServiceError("Only method {'type': 'supervised'} is supported (LoRA).", "invalid_method", "method")
    supervised = method.get("supervised") or {}
    if not isinstance(supervised, dict):
        raise ServiceError("method.supervised must be an object.", "invalid_method", "method")
    return method, dict(supervised.get("hyperparameters") or legacy or {})


def _fine_tunable(organization_id: int, model) -> BaseModel:
    base = catalog.visible_base_models(organization_id).filter(pk=model).first() if isinstance(model, str) else None
    if base is None:
        raise NotFound(
            f"The model '{model}' does not exist or you do not have access to it.", "model_not_found", "model"
        )
    if not base.fine_tunable or base.status != BaseModel.Status.ACTIVE:
        raise ServiceError(f"The model '{model}' cannot be fine-tuned.", "model_not_fine_tunable", "model")
    return base


def _resolve(base: BaseModel, train: File, raw: dict) -> dict:
    try:
        return hp.resolve(
            raw,
            examples=train.report.get("examples", 0),
            context_length=base.context_length,
            default_targets=base.default_lora_targets,
        )
    except hp.HyperparameterError as exc:
        raise ServiceError(exc.message, "invalid_hyperparameters", f"hyperparameters.{exc.param}") from None


def estimate(*, organization_id: int, model: str, training_file: str, hyperparameters: dict | None = None) -> dict:
    """What a job would be, before it is created: its resolved hyperparameters ("auto" made
    concrete), trained tokens, cost at the current training price, and how long it would train at
    the throughput this base model's jobs on the platform achieved (fine_tuning.queue.rate; None
    before any has run)."""
    base = _fine_tunable(organization_id, model)
    train = _training_file(organization_id, training_file, "training_file")
    resolved = _resolve(base, train, dict(hyperparameters or {}))
    tokens = hp.estimated_tokens(train.report, resolved)
    cost = pricing.current(organization_id, base.pk).cost(training_tokens=tokens)
    rate = queue.rate(base.pk)
    seconds = round(tokens / rate) if rate else None
    return {
        "hyperparameters": resolved,
        "estimated_tokens": tokens,
        "estimated_cost": cost,
        "estimated_seconds": seconds,
    }


@transaction.atomic
def create(
    *,
    organization_id: int,
    model: str,
    training_file: str,
    validation_file: str | None = None,
    hyperparameters: dict | None = None,
    method: dict | None = None,
    suffix: str | None = None,
    seed: int | None = None,
    metadata: dict | None = None,
    accelerators=None,
    actor: Actor,
) -> FineTuningJob:
    # Lock the organization: the active-job limit must hold when two creates race.
    org = Organization.objects.select_for_update().get(pk=organization_id)
    base = _fine_tunable(organization_id, model)
    train = _training_file(organization_id, training_file, "training_file")
    valid = _training_file(organization_id, validation_file, "validation_file") if validation_file else None
    if suffix is not None and (not isinstance(suffix, str) or len(suffix) > 64):
        raise ServiceError("suffix must be a string of at most 64 characters.", "invalid_suffix", "suffix")
    suffix = re.sub(r"[^a-z0-9-]+", "-", (suffix or "").lower()).strip("-")[:64]
    if metadata is not None and (
        not isinstance(metadata, dict)
        or len(metadata) > 16
        or not all(
            isinstance(k, str) and isinstance(v, str) and len(k) <= 64 and len(v) <= 512 for k, v in metadata.items()
        )
    ):
        raise ServiceError(
            "metadata: at most 16 string pairs (keys <= 64, values <= 512 characters).",
            "invalid_metadata",
            "metadata",
        )
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**31):
        raise ServiceError("seed must be an integer between 0 and 2147483647.", "invalid_seed", "seed")
    method, raw = _method_hyperparameters(method, hyperparameters)
    resolved = _resolve(base, train, raw)
    try:
        devices = hp.accelerators(accelerators)
    except hp.HyperparameterError as exc:
        raise ServiceError(exc.message, "invalid_accelerators", "accelerators") from None
    active = FineTuningJob.all_orgs.filter(organization=org, status__in=FineTuningJob.ACTIVE).count()
    if active >= settings.FINE_TUNING_MAX_ACTIVE_JOBS:
        raise TooManyJobs(
            f"This organization already has {active} active fine-tuning jobs (the limit is "
            f"{settings.FINE_TUNING_MAX_ACTIVE_JOBS}); wait for one to finish or cancel one.",
            "too_many_active_jobs",
        )
    version = DatasetVersion.all_orgs.filter(file=train).order_by("-created_at").first()
    job = FineTuningJob.all_orgs.create(
        organization=org,
        base_model=base,
        training_file=train,
        validation_file=valid,
        dataset_version=version,
        hyperparameters=resolved,
        method={"type": "supervised", "supervised": {"hyperparameters": resolved}},
        suffix=suffix,
        seed=seed if seed is not None else secrets.randbelow(2**31),
        metadata=metadata,
        estimated_tokens=hp.estimated_tokens(train.report, resolved),
        accelerators=devices,
        memory_bytes=queue.memory_needed(base, resolved, devices),
        created_by=actor.user,
        created_by_key_id=actor.api_key_id,
    )
    estimated_cost = _reserve_estimate(job, actor)
    event(job.pk, organization_id, f"Created fine-tuning job: {job.pk}")
    audit.record(
        "fine_tuning.job_created",
        actor=actor,
        organization_id=organization_id,
        target=job,
        data={
            "model": base.pk,
            "training_file": train.pk,
            "estimated_tokens": job.estimated_tokens,
            "estimated_cost": str(money.to_decimal(estimated_cost)),
        },
    )
    # Preparing is a few checks: done right after the commit rather than through the broker, so
    # a job cannot be stranded in validating_files by a lost message, and one queue hop is saved.
    transaction.on_commit(lambda: prepare(job.pk))
    return job


def _reserve_estimate(job: FineTuningJob, actor: Actor) -> int:
    """Refuse a job whose estimated cost (its estimated trained tokens at the base model's training
    price) is more than the organization's budgets allow, and hold it for the job's life."""
    cost = pricing.current(job.organization_id, job.base_model_id).cost(training_tokens=job.estimated_tokens)
    try:
        billing.reserve(
            request_id=f"train:{job.pk}",
            organization_id=job.organization_id,
            api_key_id=str(actor.api_key_id) if actor.api_key_id else None,
            amount=cost,
            ttl_seconds=TRAINING_HOLD_SECONDS,
        )
    except InsufficientQuota as refused:
        raise QuotaExceeded(
            f"This fine-tuning job is estimated to cost {money.display(cost)} ({job.estimated_tokens} trained "
            f"tokens), more than is available: {refused.message}",
            "insufficient_quota",
        ) from None
    return cost


def prepare(job_id: str) -> FineTuningJob:
    """validating_files -> queued: the files still exist and are valid for this base model."""
    with transaction.atomic():
        job = FineTuningJob.all_orgs.select_for_update().select_related("training_file", "base_model").get(pk=job_id)
        if job.status != Status.VALIDATING_FILES:
            return job
        longest = job.training_file.report.get("max_example_tokens", 0)
        if job.training_file.deleted_at is not None:
            return _fail_locked(job, "file_deleted", "The training file was deleted before the job started.")
        event(job.pk, job.organization_id, "Validating training file: " + job.training_file.pk)
        if longest > job.hyperparameters["max_seq_len"]:
            event(
                job.pk,
                job.organization_id,
                f"Examples longer than max_seq_len={job.hyperparameters['max_seq_len']} "
                f"tokens (the longest has {longest}) are truncated.",
                level="warn",
            )
        job.status, job.queued_at = Status.QUEUED, timezone.now()
        job.save(update_fields=["status", "queued_at"])
        event(job.pk, job.organization_id, "Files validated, moving job to queued state")
        transaction.on_commit(lambda: dispatch(job))
    return job


def dispatch(job: FineTuningJob) -> None:
    """Wake the GPU workers: one of them claims by the pool's policy, not necessarily this job."""
    allocations.wake_training()


def _fail_locked(job: FineTuningJob, code: str, message: str) -> FineTuningJob:
    job.status, job.finished_at = Status.FAILED, timezone.now()
    job.error = {"code": code, "message": message, "param": None}
    job.lease_owner, job.lease_expires_at = "", None
    job.save(update_fields=["status", "finished_at", "error", "lease_owner", "lease_expires_at"])
    allocations.release(job.pk, f"failed: {code}")
    event(job.pk, job.organization_id, f"Job failed: {message}", level="error", data={"error_code": code})
    _meter(job)
    return job


_OUTCOMES = {Status.SUCCEEDED: "ok", Status.FAILED: "failed", Status.CANCELLED: "cancelled"}


def _meter(job: FineTuningJob) -> None:
    """A job that ended writes its trained tokens to the usage ledger, in the transaction that ended
    it (the ledger is idempotent on the job id, so a retried finish counts nothing twice), and its
    work directory is trimmed to what the retention rule keeps once that transaction commits."""
    job_id = job.pk
    transaction.on_commit(lambda: retention.trim(job_id))
    billing.record_training(
        job_id=job.pk,
        organization_id=job.organization_id,
        api_key_id=str(job.created_by_key_id) if job.created_by_key_id else None,
        model=job.fine_tuned_model or job.base_model_id,
        base_model=job.base_model_id,
        trained_tokens=job.trained_tokens or 0,
        outcome=_OUTCOMES[job.status],
        train_seconds=job.train_seconds,
    )


@dataclass(frozen=True)
class Outcome:
    """How a run of the trainer ended, as the runner saw it."""

    code: int  # the trainer's exit code
    stop: str = ""  # "cancel" | "pause" | "preempt" when the job was asked to stop
    error: str = ""  # the trainer's last error line, for a failure
    trained_tokens: int | None = None
    train_seconds: float | None = None
    peak_memory_bytes: int | None = None
    fine_tuned_model: str | None = None  # on success: the model to register, its adapter in the store already
    # Set when the platform cut the run short (a node of its gang failed, its trainer was killed):
    # the job goes back to the queue and resumes from its last checkpoint, as after a lost worker.
    interrupted: str = ""


@transaction.atomic
def finish(job_id: str, *, worker: str, outcome: Outcome) -> str:
    """The end of a run, under the job's row lock: succeeded, cancelled, paused or failed. Only the
    worker holding the lease may finish it (a run the reaper gave away decides nothing)."""
    job = FineTuningJob.all_orgs.select_for_update().get(pk=job_id)
    if job.lease_owner != worker or job.status != Status.RUNNING:
        return job.status
    now = timezone.now()
    job.lease_owner, job.lease_expires_at, job.stop_requested = "", None, ""
    org = job.organization_id
    preempted = allocations.preempt_reason(job.pk) if outcome.stop == "preempt" else None
    allocations.release(job.pk, "preempted" if preempted else "the run ended")
    if outcome.code == 0 and outcome.fine_tuned_model:
        catalog_services.register_fine_tuned_model(
            outcome.fine_tuned_model,
            organization_id=org,
            base_model_id=job.base_model_id,
            job_id=job.pk,
            adapter_path=job.pk,
            actor=Actor(),
        )
        job.fine_tuned_model = outcome.fine_tuned_model
        job.status, job.finished_at, job.progress = Status.SUCCEEDED, now, 1.0
        job.trained_tokens, job.train_seconds = outcome.trained_tokens, outcome.train_seconds
        job.peak_memory_bytes = outcome.peak_memory_bytes
        event(job.pk, org, f"New fine-tuned model created: {job.fine_tuned_model}")
        event(job.pk, org, "The job has successfully completed")
    elif outcome.stop == "cancel":
        job.status, job.finished_at = Status.CANCELLED, now
        event(job.pk, org, "Job cancelled")
    elif outcome.stop == "pause":
        job.status = Status.PAUSED
        event(job.pk, org, "Job paused at its last checkpoint")
    elif preempted is not None:  # it resumes from the newest checkpoint on disk, whatever the exit
        # Its place in the queue (queued_at) is kept: it resumes as soon as the pool has room.
        job.status, job.preemptions = Status.QUEUED, job.preemptions + 1
        event(
            job.pk,
            org,
            f"Preempted: {preempted}. The job checkpointed and is queued again; it resumes from that "
            "checkpoint when accelerators free up, and no step is trained or billed twice",
            level="warn",
            data={"preempted": True, "reason": preempted},
        )
        transaction.on_commit(lambda: dispatch(job))
    elif outcome.interrupted and job.attempts - job.preemptions < settings.FINE_TUNING_MAX_ATTEMPTS:
        job.status, job.dispatched_at = Status.QUEUED, now  # its place in the queue (queued_at) is kept
        event(
            job.pk,
            org,
            f"Interrupted: {outcome.interrupted}. The job is queued again and will resume from its last checkpoint",
            level="warn",
            data={"interrupted": outcome.interrupted},
        )
        transaction.on_commit(lambda: dispatch(job))
    else:
        job.status, job.finished_at = Status.FAILED, now
        why = outcome.error or (
            "the platform failed while training (not a problem found in your data); the operator's log has the "
            f"details under {job.pk}"
        )
        message = f"Training failed (exit code {outcome.code}): {why}"
        job.error = {"code": "training_failed", "param": None, "message": message}
        event(job.pk, org, message, level="error", data={"error_code": "training_failed"})
    job.save()
    if job.status == Status.QUEUED:
        # Back in the queue: why it waits shows at once (a preempted job's accelerators went to the
        # replica that asked), not only when a worker next tries to claim.
        explain()
    if job.status in _OUTCOMES:
        _meter(job)
    return job.status


@transaction.atomic
def cancel(job_id: str, *, organization_id: int, actor: Actor) -> FineTuningJob:
    job = FineTuningJob.all_orgs.select_for_update().get(pk=job_id, organization_id=organization_id)
    if job.status in FineTuningJob.FINISHED:
        raise Conflict(f"The job is {job.status} already.", "job_finished")
    if job.status == Status.RUNNING:
        job.stop_requested = "cancel"  # the worker stops the trainer within seconds and finishes the job
        job.save(update_fields=["stop_requested"])
    else:
        job.status, job.finished_at = Status.CANCELLED, timezone.now()
        job.save(update_fields=["status", "finished_at"])
        event(job.pk, organization_id, "Job cancelled")
        _meter(job)
    audit.record("fine_tuning.job_cancelled", actor=actor, organization_id=organization_id, target=job)
    return job


@transaction.atomic
def pause(job_id: str, *, organization_id: int, actor: Actor) -> FineTuningJob:
    job = FineTuningJob.all_orgs.select_for_update().get(pk=job_id, organization_id=organization_id)
    if job.status == Status.QUEUED:
        job.status = Status.PAUSED
        job.save(update_fields=["status"])
        event(job.pk, organization_id, "Job paused")
    elif job.status == Status.RUNNING:
        job.stop_requested = "pause"  # the trainer checkpoints, then the worker marks it paused
        job.save(update_fields=["stop_requested"])
    else:
        raise Conflict(f"A {job.status} job cannot be paused.", "job_not_pausable")
    audit.record("fine_tuning.job_paused", actor=actor, organization_id=organization_id, target=job)
    return job


@transaction.atomic
def resume(job_id: str, *, organization_id: int, actor: Actor) -> FineTuningJob:
    job = FineTuningJob.all_orgs.select_for_update().get(pk=job_id, organization_id=organization_id)
    if job.status != Status.PAUSED:
        raise Conflict(f"Only a paused job can be resumed; this one is {job.status}.", "job_not_paused")
    job.status, job.queued_at, job.stop_requested = Status.QUEUED, timezone.now(), ""
    job.save(update_fields=["status", "queued_at", "stop_requested"])
    event(job.pk, organization_id, "Job resumed; it continues from its last checkpoint")
    audit.record("fine_tuning.job_resumed", actor=actor, organization_id=organization_id, target=job)
    transaction.on_commit(lambda: dispatch(job))
    return job


# --- The lease --------------------------------------------------------------------------------


def claim_next(worker: str, node) -> FineTuningJob | None:
    """Pull: the queued job the pool's policy gives this worker's node (fine_tuning.queue), claimed
    with its accelerators and lease; None when nothing fits here now. Jobs ahead of it that wait
    keep their reason on the job and in its events."""
    passed: set[str] = set()
    while True:
        with transaction.atomic():
            node = allocations.lock_node(node.pk)  # one claim at a time per node: no accelerator taken twice
            compute_services.heartbeat_node(node.pk)  # the node claiming is alive, whatever its last beat
            decision = queue.decide(node.name, exclude=passed)
            record_waits(decision.waiting)
            if decision.chosen is None:
                return None
            job = (
                FineTuningJob.all_orgs.select_for_update(skip_locked=True)
                .filter(pk=decision.chosen.id, status=Status.QUEUED)
                .first()
            )
            if job is not None and _take(job, worker, node, decision.gang):
                return job
        passed.add(decision.chosen.id)  # taken meanwhile by another node's worker


def claim(job_id: str, worker: str, node) -> bool:
    """Take this job, if it is queued (or running under an expired lease) and this node has room
    for it, bypassing the claim order (an operator's or a test's direct run)."""
    with transaction.atomic():
        # The job's lock, then the node's: the order finish and the reaper take them in.
        job = FineTuningJob.all_orgs.select_for_update().filter(pk=job_id).first()
        if job is None:
            return False
        node = allocations.lock_node(node.pk)
        expired = job.status == Status.RUNNING and job.lease_expires_at and job.lease_expires_at < timezone.now()
        if not (job.status == Status.QUEUED or expired):
            return False
        if expired:
            allocations.release(job.pk, "its lease expired")
        return _take(job, worker, node)


def _take(job: FineTuningJob, worker: str, node, gang: list[tuple[str, int]] | None = None) -> bool:
    """Accelerators of the node (of every node of its gang, for a job too large for one), then the
    lease (the caller holds the node's and the job's locks)."""
    now = timezone.now()
    if gang:
        taken = allocations.hold_gang(
            node, gang, holder=job.pk, organization_id=job.organization_id, memory_bytes=job.memory_bytes, now=now
        )
        held = taken[0] if taken else None
    else:
        held = allocations.hold_for_training(
            node,
            holder=job.pk,
            organization_id=job.organization_id,
            accelerators=job.accelerators,
            memory_bytes=job.memory_bytes,
            now=now,
        )
    if held is None:
        return False
    job.status, job.lease_owner, job.lease_expires_at = Status.RUNNING, worker, now + _lease()
    job.attempts += 1
    job.started_at = job.started_at or now
    job.wait_reason = ""
    job.save(update_fields=["status", "lease_owner", "lease_expires_at", "attempts", "started_at", "wait_reason"])
    if held.lent:
        event(
            job.pk,
            job.organization_id,
            f"Running on accelerators an idle endpoint lends ({node.name}); "
            "if the endpoint is called again, the job checkpoints and waits for its turn again",
        )
    return True


def renew(job_id: str, worker: str) -> bool:
    """Extend the lease; False if this worker no longer holds it (then it must stop)."""
    return bool(
        FineTuningJob.all_orgs.filter(pk=job_id, lease_owner=worker, status=Status.RUNNING).update(
            lease_expires_at=timezone.now() + _lease()
        )
    )


def holds_lease(job_id: str, worker: str) -> bool:
    return FineTuningJob.all_orgs.filter(pk=job_id, lease_owner=worker, status=Status.RUNNING).exists()


def _lease() -> timedelta:
    return timedelta(seconds=settings.FINE_TUNING_LEASE_SECONDS)


@transaction.atomic
def requeue_expired() -> list[FineTuningJob]:
    """The reaper: running jobs whose worker stopped renewing go back to the queue, and queued jobs
    that no worker picked up for a while are dispatched again (claims make duplicates harmless).
    A job is re-sent at most once per FINE_TUNING_REDISPATCH_SECONDS: its dispatched_at moves, not
    its queued_at (its place in the queue), so a busy GPU does not pile up copies of its message."""
    now = timezone.now()
    allocations.reap_nodes()
    requeued = []
    expired = FineTuningJob.all_orgs.select_for_update(skip_locked=True).filter(
        status=Status.RUNNING, lease_expires_at__lt=now
    )
    for job in expired:
        if job.attempts - job.preemptions >= settings.FINE_TUNING_MAX_ATTEMPTS:  # preemptions are not failures
            _fail_locked(
                job,
                "too_many_interruptions",
                f"The job's worker stopped answering {job.attempts - job.preemptions} times; it is not retried again. "
                "Its last checkpoint is kept: create a new job to train on.",
            )
            continue
        # Its place in the queue (queued_at) is kept, as a preempted job's is: it was running, and
        # must not wait behind jobs sent after it because its worker died.
        if FineTuningJob.all_orgs.filter(pk=job.pk, status=Status.RUNNING, lease_expires_at__lt=now).update(
            status=Status.QUEUED, lease_owner="", dispatched_at=now
        ):
            allocations.release(job.pk, "its worker stopped answering")
            event(
                job.pk,
                job.organization_id,
                "The worker running this job stopped answering; the job is queued "
                "again and will resume from its last checkpoint",
                level="warn",
            )
            requeued.append(job)
    stale = now - timedelta(seconds=settings.FINE_TUNING_REDISPATCH_SECONDS)
    waiting = FineTuningJob.all_orgs.filter(status=Status.QUEUED, queued_at__lt=stale).filter(
        Q(dispatched_at__isnull=True) | Q(dispatched_at__lt=stale)
    )
    for job in waiting:
        # Conditional, so two reapers cannot both send it.
        if (
            FineTuningJob.all_orgs.filter(pk=job.pk, status=Status.QUEUED)
            .filter(Q(dispatched_at__isnull=True) | Q(dispatched_at__lt=stale))
            .update(dispatched_at=now)
        ):
            requeued.append(job)
    for job in requeued:
        transaction.on_commit(lambda job=job: dispatch(job))
    return requeued


def queue_position(job: FineTuningJob) -> int | None:
    return queue_positions([job]).get(job.pk)


def queue_positions(rows: list[FineTuningJob]) -> dict[str, int]:
    """Places in the pool's claim order (priority class, fair share, age) of the queued jobs among
    `rows`: 1 starts next. fine_tuning.queue.places adds when each should start."""
    return {pk: place.position for pk, place in queue.places(rows).items()}


@transaction.atomic
def requeue(job_id: str, *, actor: Actor) -> FineTuningJob:
    """Operator action: put a running, failed or paused job back in the queue. It resumes from its
    last checkpoint; a worker still running it loses its lease and stops at its next renewal."""
    job = FineTuningJob.all_orgs.select_for_update().get(pk=job_id)
    if job.status not in (Status.RUNNING, Status.FAILED, Status.PAUSED, Status.QUEUED):
        raise Conflict(f"A {job.status} job cannot be requeued.", "job_not_requeueable")
    job.status, job.queued_at, job.error, job.finished_at = Status.QUEUED, timezone.now(), None, None
    job.lease_owner, job.lease_expires_at, job.stop_requested = "", None, ""
    job.save(
        update_fields=[
            "status",
            "queued_at",
            "error",
            "finished_at",
            "lease_owner",
            "lease_expires_at",
            "stop_requested",
        ]
    )
    allocations.release(job.pk, "requeued by the platform operator")
    event(job.pk, job.organization_id, "Requeued by the platform operator", level="warn")
    audit.record("fine_tuning.job_requeued", actor=actor, organization_id=job.organization_id, target=job)
    transaction.on_commit(lambda: dispatch(job))
    return job


# --- Progress and reasons on the job row (this module owns it; the runner and the reaper ask) ---


def record_progress(
    job_id: str, worker: str, *, progress: float, trained_tokens: int, train_seconds: float, eta_seconds
) -> bool:
    """A running job's progress, from the worker holding its lease; False (nothing written) for a
    worker that lost it: a run the reaper gave away writes no progress over the new run's."""
    return bool(
        FineTuningJob.all_orgs.filter(pk=job_id, lease_owner=worker, status=Status.RUNNING).update(
            progress=progress,
            trained_tokens=trained_tokens,
            train_seconds=train_seconds,
            estimated_finish=timezone.now() + timedelta(seconds=eta_seconds) if eta_seconds is not None else None,
        )
    )


def record_evaluation(job_id: str, evaluation: dict) -> None:
    FineTuningJob.all_orgs.filter(pk=job_id).update(evaluation=evaluation)


@transaction.atomic
def explain() -> int:
    """Why each queued job waits, seen from the whole pool. Claims record reasons too, but only
    when a worker is free to claim: run by the reaper, this tells the jobs in a busy pool why they
    wait (a job too big for every node, say) before any worker looks. Returns how many wait."""
    waiting = queue.decide(None).waiting
    record_waits(waiting)
    return len(waiting)


def record_waits(waiting: dict) -> None:
    """Keep each waiting job's reason on the job; when the kind of reason changes, say so in its
    events (a count of free accelerators changing is not news)."""
    if not waiting:
        return
    # Rows another transaction holds are left for a later claim to explain: a claim never waits on a job.
    rows = FineTuningJob.all_orgs.select_for_update(skip_locked=True).filter(pk__in=list(waiting), status=Status.QUEUED)
    for pk, org, before in rows.values_list("pk", "organization_id", "wait_reason"):
        wait = waiting[pk]
        if before == wait.message:
            continue
        FineTuningJob.all_orgs.filter(pk=pk).update(wait_reason=wait.message[:500])
        if not before.startswith(queue.REASON_PREFIX[wait.code]):
            JobEvent.all_orgs.create(
                job_id=pk, organization_id=org, message=wait.message, level="info", data={"waiting": wait.code}
            )
