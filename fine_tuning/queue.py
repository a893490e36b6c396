"""The fine-tuning queue seen through the pool's policy (compute.policy): which queued job a node
should take next, why the others wait, each job's place and when it should start."""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime

from django.conf import settings
from django.utils import timezone

from compute import allocations, policy
from fine_tuning import hyperparameters as hp
from fine_tuning.models import FineTuningJob

Status = FineTuningJob.Status


def _requests(rows) -> list[policy.Request]:
    return [
        policy.Request(
            id=pk,
            organization=org,
            accelerators=count,
            memory_bytes=memory,
            queued_at=(queued or created).timestamp(),
        )
        for pk, org, count, memory, queued, created in rows
    ]


def _queued():
    return FineTuningJob.all_orgs.filter(status=Status.QUEUED).values_list(
        "pk", "organization_id", "accelerators", "memory_bytes", "queued_at", "created_at"
    )


def decide(node_name: str | None, *, exclude: set[str] = frozenset(), now: datetime | None = None) -> policy.Decision:
    """The queued job `node_name` should take next (any node's, with None), and why each job ahead
    of it waits."""
    now = now or timezone.now()
    requests = [r for r in _requests(_queued()) if r.id not in exclude]
    tenants = allocations.tenants({r.organization for r in requests}, now)
    return policy.choose(
        requests,
        tenants,
        allocations.pool(now),
        now=now.timestamp(),
        on=node_name,
        reserve_after=settings.COMPUTE_RESERVE_AFTER_SECONDS,
    )


# The opening words of each kind of reason (as compute.policy words them), to tell kinds apart.
REASON_PREFIX = {
    "quota": "Your organization's quota",
    "too_big": "It needs",
    "busy": "Waiting for",
    "held": "Waiting for",
}


@dataclass(frozen=True)
class Place:
    position: int  # 1 = the next to start anywhere in the pool
    estimated_start: datetime | None  # None: not known (no throughput measured yet, or capacity not known)


MEASURED_MARGIN = 1.1  # a run's peak varies a little with its data


def memory_needed(base_model, hyperparameters: dict, accelerators: int) -> int:
    """What a new job needs on each accelerator: what the closest measured run of its model used (a
    recent successful job holding at least as many tokens a step on each accelerator), with a
    margin; before any such run, the coarse bound of fine_tuning.hyperparameters."""
    tokens = hp.tokens_per_accelerator(hyperparameters, accelerators)
    runs = (
        FineTuningJob.all_orgs.filter(base_model=base_model, status=Status.SUCCEEDED, peak_memory_bytes__gt=0)
        .order_by("-finished_at")
        .values_list("peak_memory_bytes", "hyperparameters", "accelerators")[:20]
    )
    closest = None
    for peak, used, count in runs:
        theirs = hp.tokens_per_accelerator(used, count) if {"batch_size", "max_seq_len"} <= used.keys() else 0
        if theirs >= tokens and (closest is None or theirs < closest[0]):
            closest = (theirs, peak)
    if closest is not None:
        return int(closest[1] * MEASURED_MARGIN)
    return hp.memory_per_accelerator(base_model.parameters, hyperparameters, accelerators)


def rate(base_model_id: str) -> float | None:
    """Trained tokens per second of this base model: its recent successful jobs', or before any has
    succeeded, what its running jobs have reported so far (None before either)."""
    measured = FineTuningJob.all_orgs.filter(base_model_id=base_model_id, train_seconds__gt=0).exclude(
        trained_tokens=None
    )
    for status, latest in ((Status.SUCCEEDED, "-finished_at"), (Status.RUNNING, "-started_at")):
        recent = measured.filter(status=status).order_by(latest).values_list("trained_tokens", "train_seconds")[:5]
        tokens = sum(t for t, _ in recent)
        seconds = sum(s for _, s in recent)
        if tokens and seconds:
            return tokens / seconds
    return None


def places(rows) -> dict[str, Place]:
    """Places of the queued jobs among `rows` in the pool's claim order, and when each should start:
    the running jobs' estimated finishes and the queued jobs' estimated durations (their tokens at
    their model's measured throughput) laid onto the pool's accelerators. A constant number of
    queries however many rows; other organizations' jobs are counted, never shown."""
    if not any(job.status == Status.QUEUED for job in rows):
        return {}
    now = timezone.now()
    queued = list(
        FineTuningJob.all_orgs.filter(status=Status.QUEUED).values_list(
            "pk",
            "organization_id",
            "accelerators",
            "memory_bytes",
            "queued_at",
            "created_at",
            "estimated_tokens",
            "base_model_id",
        )
    )
    requests = _requests(row[:6] for row in queued)
    ordered = policy.order(requests, allocations.tenants({r.organization for r in requests}, now))
    rates = {base: rate(base) for base in {row[7] for row in queued}}
    durations = {row[0]: (row[6] / rates[row[7]] if rates[row[7]] else None) for row in queued}
    starts = policy.estimate_starts([(r, durations[r.id]) for r in ordered], _free_times(now), now=now.timestamp())
    wanted = {job.pk for job in rows if job.status == Status.QUEUED}
    result = {}
    for position, request in enumerate(ordered, start=1):
        if request.id in wanted:
            start = starts.get(request.id)
            result[request.id] = Place(position, datetime.fromtimestamp(start, tz=now.tzinfo) if start else None)
    return result


def _free_times(now: datetime) -> list[tuple[str, int, list[float]]]:
    """Each live node's accelerators and when each frees: now if free, a training job's estimated
    finish, and never known for an endpoint's replica."""
    nodes = [n for n in allocations.live_nodes(now) if n.schedulable]
    held = list(allocations.live().filter(node__in=nodes).values_list("node_id", "kind", "holder", "devices"))
    finishes = dict(
        FineTuningJob.all_orgs.filter(pk__in=[h for _, kind, h, _ in held if kind == "training"]).values_list(
            "pk", "estimated_finish"
        )
    )
    result = []
    for node in nodes:
        times = [now.timestamp()] * node.accelerator_count
        for node_id, kind, holder, devices in held:
            if node_id != node.pk:
                continue
            finish = finishes.get(holder) if kind == "training" else None
            for device in devices:
                if device < len(times):
                    times[device] = max(finish.timestamp(), now.timestamp()) if finish else math.inf
        result.append((node.name, node.accelerator_memory_bytes, times))
    return result
