"""Replicas the platform runs: a deployment's engine process on some accelerators of a node, and
the one place their state changes.

    starting -> ready -> draining -> ended
        \\-> (the engine exits) starting again, with back-off; failed after SERVING_MAX_CRASHES

A replica is a `Backend` row with a deployment and a pool `Allocation`: placing it takes the
accelerators (serving comes before training, so training may be asked to step aside, and the
replica waits, starting, until its allocation is active); its node's agent (serving.agent) starts
the engine, probes it with a real generation and reports here; the gateway routes only to ready
replicas. Draining ones take no new requests; their agent stops them once their requests finished
(or at the deadline), and ending releases the accelerators to training.
"""

from __future__ import annotations

import logging
import secrets
from datetime import datetime, timedelta

from django.conf import settings
from django.db import transaction
from django.utils import timezone
from django.utils.text import slugify

from compute import allocations
from compute.models import Allocation
from serving import deployments, placement
from serving.models import Backend, Deployment, ReplicaState
from tenancy import dispatch

log = logging.getLogger("serving.replicas")
R = ReplicaState
LIVE = (R.STARTING, R.READY)
ACCELERATORS = 1
PUBLISH_TASK = "serving.tasks.publish_endpoint"
CRASH_WINDOW = timedelta(minutes=10)


def live(deployment: Deployment):
    return Backend.objects.filter(deployment=deployment, state__in=LIVE)


def on_node(node_id: int):
    """What a node's agent runs: every replica placed there that is not over."""
    return Backend.objects.filter(node_id=node_id, state__in=[*LIVE, R.DRAINING]).select_related(
        "deployment", "base_model", "allocation"
    )


@transaction.atomic
def add(deployment: Deployment) -> Backend | str:
    """Place one more replica: a node with room and memory for it (placement), its accelerators
    held in the pool. Returns the replica, or why none could be placed."""
    base = deployment.base_model
    need = base.serving_memory_bytes()
    node = placement.choose(deployment, need)
    if isinstance(node, str):
        return node
    name = f"{slugify(deployment.key.replace(':', '-'))[:60]}-{secrets.token_hex(3)}"
    room = allocations.hold_for_replica(
        node.pk,
        holder=name,  # its allocation is held under the replica's name
        organization_id=deployment.organization_id,
        accelerators=ACCELERATORS,
        memory_bytes=need,
        notify="",
    )
    if room.allocation is None:
        return room.refused or f"no accelerator of node {node.name} is free for it"
    # The allocation and its replica row commit together (a process that dies between holds nothing).
    backend = Backend.objects.create(
        name=name,
        url=f"http://{node.address}:0",  # the port is the agent's to choose when it starts the engine
        engine=deployment.engine,
        base_model=base,
        served_model_name=base.pk,
        api_key=secrets.token_urlsafe(24),
        node=node,
        deployment=deployment,
        allocation=room.allocation,
        state=R.STARTING,
        healthy=False,
    )
    waiting = f", after training steps aside ({', '.join(room.preempting)})" if room.preempting else ""
    deployments.event(
        deployment,
        "replica_placed",
        f"replica {name} placed on {node.name} {room.allocation.devices}{waiting}",
        node=node.name,
        devices=room.allocation.devices,
        memory_bytes=need,
    )
    return backend


def may_start(backend: Backend) -> bool:
    """Its accelerators are its own (training on them has stepped aside)."""
    allocation = backend.allocation
    return allocation is not None and allocation.state == Allocation.State.ACTIVE


@transaction.atomic
def launched(backend_id: int, *, pid: int, port: int) -> None:
    backend = Backend.objects.select_for_update(of=("self",)).select_related("node").get(pk=backend_id)
    backend.pid, backend.url = pid, f"http://{backend.node.address}:{port}"
    backend.started_at = timezone.now()
    backend.save(update_fields=["pid", "url", "started_at"])


@transaction.atomic
def ready(backend_id: int) -> bool:
    """The engine answered a real generation: the gateway may route to it."""
    backend = Backend.objects.select_for_update().get(pk=backend_id)
    if backend.state != R.STARTING:
        return False
    backend.state, backend.healthy, backend.state_reason = R.READY, True, ""
    backend.last_checked_at = timezone.now()
    backend.save(update_fields=["state", "healthy", "state_reason", "last_checked_at"])
    endpoint_id = backend.deployment.endpoint_id
    if endpoint_id:  # a dedicated endpoint waiting for its own replicas is published now
        transaction.on_commit(lambda: dispatch.send(PUBLISH_TASK, endpoint_id))
    seconds = (timezone.now() - backend.started_at).total_seconds() if backend.started_at else None
    deployments.event(
        backend.deployment,
        "replica_ready",
        f"replica {backend.name} serves" + (f" ({seconds:.1f} s from its start)" if seconds is not None else ""),
        start_seconds=seconds,
    )
    return True


@transaction.atomic
def crashed(backend_id: int, reason: str, now: datetime | None = None) -> str:
    """The engine exited (or never answered) unasked. It starts again, unless it has crashed
    SERVING_MAX_CRASHES times in ten minutes: then it fails with `reason` (words a tenant may
    read) and its accelerators go back. Returns the state it is in now."""
    now = now or timezone.now()
    backend = Backend.objects.select_for_update().get(pk=backend_id)
    if backend.state not in (*LIVE, R.DRAINING):
        return backend.state
    recent = [t for t in backend.crashes if datetime.fromisoformat(t) > now - CRASH_WINDOW] + [now.isoformat()]
    backend.crashes, backend.pid, backend.healthy = recent, None, False
    if backend.state == R.DRAINING:
        return _end(backend, "its engine exited while draining", now)
    if len(recent) >= settings.SERVING_MAX_CRASHES:
        backend.state, backend.state_reason = R.FAILED, reason[:500]
        backend.ended_at = now
        backend.save()
        allocations.release(backend.name, f"replica failed: {reason}")
        deployments.event(
            backend.deployment, "replica_failed", f"replica {backend.name} failed: {reason}", crashes=len(recent)
        )
        return R.FAILED
    backend.state, backend.state_reason = R.STARTING, reason[:500]
    backend.save()
    deployments.event(
        backend.deployment,
        "replica_crashed",
        f"replica {backend.name} stopped unasked ({reason}); starting it again",
        crashes=len(recent),
    )
    return R.STARTING


@transaction.atomic
def restart(backend_id: int, reason: str) -> str:
    """Start its engine again without counting a crash (its agent, not its engine, went away)."""
    backend = Backend.objects.select_for_update().get(pk=backend_id)
    if backend.state != R.READY:
        return backend.state
    backend.state, backend.healthy, backend.pid, backend.state_reason = R.STARTING, False, None, reason[:500]
    backend.save(update_fields=["state", "healthy", "pid", "state_reason"])
    deployments.event(backend.deployment, "replica_restarting", f"replica {backend.name} starts again: {reason}")
    return R.STARTING


@transaction.atomic
def failed(backend_id: int, reason: str) -> None:
    """It cannot run (its engine is missing, its adapter does not load): failed at once, with
    `reason` for the tenant; its accelerators go back."""
    backend = Backend.objects.select_for_update().get(pk=backend_id)
    if backend.state in (R.ENDED, R.FAILED):
        return
    backend.state, backend.state_reason, backend.healthy, backend.pid = R.FAILED, reason[:500], False, None
    backend.ended_at = timezone.now()
    backend.save()
    allocations.release(backend.name, f"replica failed: {reason}")
    deployments.event(backend.deployment, "replica_failed", f"replica {backend.name} failed: {reason}")


def backoff_seconds(backend: Backend) -> float:
    """How long its agent waits before starting a crashed engine again."""
    return min(60.0, 2.0 ** max(0, len(backend.crashes) - 1)) if backend.crashes else 0.0


@transaction.atomic
def drain(backend_id: int, reason: str) -> bool:
    """No new requests; its agent stops it once its requests finished."""
    backend = Backend.objects.select_for_update().get(pk=backend_id)
    if backend.state not in LIVE:
        return False
    backend.state, backend.healthy, backend.state_reason = R.DRAINING, False, reason[:500]
    backend.save(update_fields=["state", "healthy", "state_reason"])
    deployments.event(backend.deployment, "replica_draining", f"replica {backend.name} drains: {reason}")
    return True


@transaction.atomic
def take_back(backend_id: int) -> bool:
    """A draining replica serves again (it is wanted after all, and its engine still runs)."""
    backend = Backend.objects.select_for_update().get(pk=backend_id)
    if backend.state != R.DRAINING or backend.pid is None:
        return False
    backend.state, backend.healthy, backend.state_reason = R.READY, True, ""
    backend.save(update_fields=["state", "healthy", "state_reason"])
    deployments.event(backend.deployment, "replica_taken_back", f"replica {backend.name} serves again")
    return True


@transaction.atomic
def ended(backend_id: int, reason: str) -> None:
    backend = Backend.objects.select_for_update().get(pk=backend_id)
    if backend.state in (R.ENDED, R.FAILED):
        return
    _end(backend, reason, timezone.now())


def _end(backend: Backend, reason: str, now: datetime) -> str:
    backend.state, backend.healthy, backend.enabled, backend.pid = R.ENDED, False, False, None
    backend.ended_at, backend.state_reason = now, reason[:500]
    backend.save()
    allocations.release(backend.name, f"replica ended: {reason}")
    deployments.event(backend.deployment, "replica_ended", f"replica {backend.name} ended: {reason}")
    return R.ENDED


def lost(deployment: Deployment) -> list[str]:
    """Replicas whose accelerators the pool took back (their node was reaped) end; the scaler
    places them again elsewhere. Returns their names."""
    gone = []
    for backend in live(deployment).select_related("allocation"):
        if backend.allocation is None or backend.allocation.state == Allocation.State.ENDED:
            ended(backend.pk, "its node left the pool")
            gone.append(backend.name)
    return gone
