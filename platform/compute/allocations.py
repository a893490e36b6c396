"""Allocations: which accelerators of which node a training job or an endpoint replica holds, and
the rules between them (platform/compute/README.md): endpoint replicas come before training, so a
replica that finds its node full asks training to make room (the job checkpoints, releases and is
queued again); an endpoint idle for COMPUTE_LEND_IDLE_SECONDS lends its accelerators to training
until it is called again. Every change to a node's allocations holds the node's row lock, so two
claims never take the same accelerator."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from compute import policy
from compute.models import Allocation, Node, OrganizationCompute
from tenancy import dispatch

log = logging.getLogger("compute.allocations")
Kind, State = Allocation.Kind, Allocation.State


def lock_node(node_id: int) -> Node:
    return Node.objects.select_for_update().get(pk=node_id)


def live(node: Node | None = None):
    rows = Allocation.objects.exclude(state=State.ENDED)
    return rows.filter(node=node) if node is not None else rows


def _lendable(allocation: Allocation, now: datetime) -> bool:
    idle = allocation.idle_since
    return (
        allocation.kind == Kind.SERVING
        and allocation.state == State.ACTIVE
        and idle is not None
        and idle <= now - timedelta(seconds=settings.COMPUTE_LEND_IDLE_SECONDS)
    )


@dataclass
class Room:
    """A node's accelerators as training sees them: free, and lendable by idle endpoints."""

    free: list[int]
    lendable: list[int]

    @property
    def count(self) -> int:
        return len(self.free) + len(self.lendable)


def room_for_training(node: Node, allocations: list[Allocation], now: datetime) -> Room:
    training = {d for a in allocations if a.kind == Kind.TRAINING for d in a.devices}
    serving = {d for a in allocations if a.kind == Kind.SERVING for d in a.devices}
    lendable = {d for a in allocations if _lendable(a, now) for d in a.devices}
    every = set(range(node.accelerator_count))
    return Room(free=sorted(every - training - serving), lendable=sorted(lendable - training))


def is_live(node: Node, now: datetime) -> bool:
    return node.stopped_at is None and node.last_heartbeat_at >= now - timedelta(
        seconds=3 * settings.WORKER_HEARTBEAT_SECONDS
    )


def live_nodes(now: datetime) -> list[Node]:
    return [n for n in Node.objects.filter(stopped_at=None) if is_live(n, now)]


def pool(now: datetime | None = None) -> list[policy.NodeFree]:
    """Every live node's room for training now (for a claim's reasons and estimates)."""
    now = now or timezone.now()
    nodes = live_nodes(now)
    by_node: dict[int, list[Allocation]] = {}
    for allocation in live().filter(node__in=nodes):
        by_node.setdefault(allocation.node_id, []).append(allocation)
    return [
        policy.NodeFree(
            name=node.name,
            free=room_for_training(node, by_node.get(node.pk, []), now).count,
            total=node.accelerator_count,
            memory_bytes=node.accelerator_memory_bytes,
            schedulable=node.schedulable,
        )
        for node in nodes
    ]


def tenants(organization_ids, now: datetime | None = None) -> dict[int, policy.Tenant]:
    """The organizations' settings, accelerators held now and recent accelerator-seconds."""
    now = now or timezone.now()
    ids = set(organization_ids)
    found = {row.organization_id: row for row in OrganizationCompute.objects.filter(organization_id__in=ids)}
    result = {
        org: policy.Tenant(
            priority=found[org].priority if org in found else 0,
            share=found[org].share if org in found else 1,
            max_accelerators=found[org].max_accelerators if org in found else None,
        )
        for org in ids
    }
    since = now - timedelta(seconds=settings.COMPUTE_FAIR_SHARE_WINDOW_SECONDS)
    rows = Allocation.objects.filter(organization_id__in=ids).exclude(ended_at__lt=since)
    for org, state, devices, started, ended in rows.values_list(
        "organization_id", "state", "devices", "started_at", "ended_at"
    ):
        tenant = result[org]
        if state != State.ENDED:
            tenant.in_use += len(devices)
        if started is not None:
            seconds = ((ended or now) - max(started, since)).total_seconds()
            # At least a second each: work that started and stopped at once still had its turn.
            tenant.usage_seconds += len(devices) * max(seconds, 1.0)
    return result


def hold_for_training(
    node: Node, *, holder: str, organization_id: int, accelerators: int, memory_bytes: int, now: datetime
) -> Allocation | None:
    """Take accelerators of a node (its row locked by the caller) for a training job: free ones
    first, then ones an idle endpoint lends. None if the node has too few."""
    allocations = list(live(node))
    room = room_for_training(node, allocations, now)
    if room.count < accelerators:
        return None
    devices = (room.free + room.lendable)[:accelerators]
    return Allocation.objects.create(
        node=node,
        organization_id=organization_id,
        kind=Kind.TRAINING,
        state=State.ACTIVE,
        holder=holder,
        devices=devices,
        memory_bytes=memory_bytes,
        lent=any(d not in room.free for d in devices),
        started_at=now,
    )


@dataclass
class ReplicaRoom:
    allocation: Allocation | None  # None: the node has no room even if all its training stopped
    preempting: list[str]  # holders of the training asked to make room
    refused: str = ""  # why there is no allocation, for the endpoint's owner


@transaction.atomic
def hold_for_replica(
    node_id: int, *, holder: str, organization_id: int, accelerators: int, memory_bytes: int, notify: str
) -> ReplicaRoom:
    """Accelerators for an endpoint replica. If training holds them, the replica's allocation is
    pending, the training it needs is asked to stop, and `notify` (a Celery task name) is sent the
    holder once the allocation is active. Asking again for the same holder returns its allocation."""
    node = lock_node(node_id)
    now = timezone.now()
    allocations = list(live(node))
    mine = next((a for a in allocations if a.holder == holder), None)
    if mine is not None:
        return ReplicaRoom(mine, [a.holder for a in allocations if a.preempt_requested_at and a.kind == Kind.TRAINING])
    refused = quota_refusal(organization_id, accelerators, lock=True)
    if refused:
        return ReplicaRoom(None, [], refused)
    serving = {d for a in allocations if a.kind == Kind.SERVING for d in a.devices}
    training = [a for a in allocations if a.kind == Kind.TRAINING]
    open_devices = [d for d in range(node.accelerator_count) if d not in serving]
    if len(open_devices) < accelerators:
        return ReplicaRoom(None, [])
    stopping = [a for a in training if a.preempt_requested_at]
    running = [a for a in training if not a.preempt_requested_at and set(a.devices) <= set(open_devices)]
    busy = {d for a in training for d in a.devices}
    idle = [d for d in open_devices if d not in busy]
    soon = [d for d in open_devices if any(d in a.devices for a in stopping)]
    victims: list[Allocation] = []
    short = accelerators - len(idle) - len(soon)
    if short > 0:
        runs = [
            policy.Running(a.holder, a.organization_id, len(a.devices), a.started_at.timestamp(), a.lent)
            for a in running
        ]
        chosen = {
            v.id
            for v in policy.preemption_victims(runs, short, tenants({a.organization_id for a in running}, now)) or []
        }
        victims = [a for a in running if a.holder in chosen]
    devices = sorted((idle + soon + [d for a in victims for d in a.devices])[:accelerators])
    ready = busy.isdisjoint(devices)
    allocation = Allocation.objects.create(
        node=node,
        organization_id=organization_id,
        kind=Kind.SERVING,
        state=State.ACTIVE if ready else State.PENDING,
        holder=holder,
        devices=devices,
        memory_bytes=memory_bytes,
        started_at=now if ready else None,
        notify=notify,
    )
    reason = f"endpoint replica {holder} needs its accelerators"
    for victim in victims:
        Allocation.objects.filter(pk=victim.pk, preempt_requested_at=None).update(
            preempt_requested_at=now, preempt_reason=reason
        )
    asked = [a.holder for a in stopping + victims if not set(a.devices).isdisjoint(devices)]
    return ReplicaRoom(allocation, asked)


def quota_refusal(organization_id: int | None, accelerators: int, *, lock: bool = False) -> str:
    """Why the organization may not hold `accelerators` more ('' if it may). With `lock`, its
    settings row is locked, so that its holds are counted one at a time."""
    if organization_id is None:
        return ""
    rows = OrganizationCompute.objects.filter(organization_id=organization_id)
    quota = (rows.select_for_update() if lock else rows).values_list("max_accelerators", flat=True).first()
    if quota is None:
        return ""
    held = sum(len(d) for d in live().filter(organization_id=organization_id).values_list("devices", flat=True))
    if held + accelerators <= quota:
        return ""
    return (
        f"the organization's quota of {quota} accelerators at once is in use ({held} held, by training and "
        "serving alike)"
    )


def member(holder: str, rank: int) -> str:
    """The holder of a job's accelerators on the rank-th node of its gang (0: the node that leads)."""
    return holder if rank == 0 else f"{holder}/{rank}"


def _of(holder: str) -> Q:
    """A holder's allocations: its own and, for a job across nodes, those of its gang."""
    return Q(holder=holder) | Q(holder__startswith=f"{holder}/")


def hold_gang(
    leader: Node, members: list[tuple[str, int]], *, holder: str, organization_id: int, memory_bytes: int, now
) -> list[Allocation] | None:
    """Accelerators of every node of a gang at once (the leader's row locked by the caller), or none:
    a node another claim holds is skipped rather than waited for (two leaders locking each other's
    nodes would deadlock), and then nothing is taken."""
    names = [name for name, _ in members]
    others = {
        n.name: n for n in Node.objects.select_for_update(skip_locked=True).filter(name__in=names).exclude(pk=leader.pk)
    }
    nodes = {leader.name: leader, **others}
    if set(nodes) != set(names):
        return None
    try:
        with transaction.atomic():
            taken = []
            for rank, (name, count) in enumerate(members):
                allocation = hold_for_training(
                    nodes[name],
                    holder=member(holder, rank),
                    organization_id=organization_id,
                    accelerators=count,
                    memory_bytes=memory_bytes,
                    now=now,
                )
                if allocation is None:
                    raise _NoRoom
                taken.append(allocation)
            return taken
    except _NoRoom:
        return None


class _NoRoom(Exception):
    pass


def gang_of(holder: str) -> list[Allocation]:
    """A job's live allocations, the leading node's first."""
    rows = list(live().filter(_of(holder)).select_related("node"))
    return sorted(rows, key=lambda a: (a.holder != holder, a.holder))


def set_launch(allocation_id: int, argv: list[str], env: dict[str, str]) -> None:
    """What the allocation's node agent is to run for it."""
    Allocation.objects.filter(pk=allocation_id).update(launch={"argv": argv, "env": env})


def launches_on(node_id: int):
    """The active allocations of a node that its agent runs processes for."""
    return live().filter(node_id=node_id, state=State.ACTIVE).exclude(launch={})


def devices_of(holder: str) -> list[int] | None:
    """The accelerators the holder's live allocation holds (None without one)."""
    row = live().filter(holder=holder).values_list("devices", flat=True).first()
    return list(row) if row is not None else None


def preempt_reason(holder: str) -> str | None:
    """Why the holder's training is asked to stop, or None if it is not."""
    row = live().filter(_of(holder), kind=Kind.TRAINING).exclude(preempt_requested_at=None).first()
    return row.preempt_reason if row else None


@transaction.atomic
def release(holder: str, reason: str, *, prefix: bool = False) -> int:
    """End the holder's allocations (with `prefix`: of every holder starting so); pending replicas
    that now have their accelerators become active and are told so, and idle GPU workers are woken.
    Returns how many ended."""
    rows = list(live().filter(Q(holder__startswith=holder) if prefix else _of(holder)))
    if not rows:
        return 0
    now = timezone.now()
    for node_id in sorted({r.node_id for r in rows}):
        lock_node(node_id)
    Allocation.objects.filter(pk__in=[r.pk for r in rows]).update(
        state=State.ENDED, ended_at=now, end_reason=reason[:300]
    )
    for node_id in sorted({r.node_id for r in rows}):
        _activate_pending(node_id, now)
    transaction.on_commit(wake_training)
    return len(rows)


def _activate_pending(node_id: int, now: datetime) -> None:
    allocations = list(live().filter(node_id=node_id))
    busy = {d for a in allocations if a.kind == Kind.TRAINING for d in a.devices}
    for pending in (a for a in allocations if a.state == State.PENDING):
        if busy.isdisjoint(pending.devices):
            Allocation.objects.filter(pk=pending.pk, state=State.PENDING).update(state=State.ACTIVE, started_at=now)
            task, holder = pending.notify, pending.holder
            if task:
                transaction.on_commit(lambda task=task, holder=holder: dispatch.send(task, holder))


def wake_training() -> None:
    """Tell the GPU workers that accelerators freed up (a worker that finds nothing to claim
    simply returns). The task is named in settings: the pool imports nothing above itself."""
    try:
        dispatch.task(settings.COMPUTE_WAKE_TASK).apply_async(queue=settings.FINE_TUNING_QUEUE)
    except Exception:
        log.exception("could not wake the GPU workers")


def set_idle(holder: str, idle_since: datetime | None) -> list[str]:
    """Serving tells the pool whether an endpoint replica is being called. Called again after
    being idle, it takes back what it lent: the training on it is asked to stop. Returns the
    holders asked to stop."""
    with transaction.atomic():
        row = live().filter(holder=holder, kind=Kind.SERVING).select_for_update().first()
        if row is None:
            return []
        if idle_since is not None:
            if row.idle_since is None:
                Allocation.objects.filter(pk=row.pk).update(idle_since=idle_since)
            return []
        Allocation.objects.filter(pk=row.pk).update(idle_since=None)
        lent = live(row.node).filter(kind=Kind.TRAINING, lent=True, preempt_requested_at=None)
        borrowers = [a for a in lent if set(a.devices) & set(row.devices)]
        now = timezone.now()
        for borrower in borrowers:
            Allocation.objects.filter(pk=borrower.pk).update(
                preempt_requested_at=now, preempt_reason=f"endpoint replica {holder} is being called again"
            )
        return [b.holder for b in borrowers]


@transaction.atomic
def reap_nodes() -> list[str]:
    """Nodes that stopped heartbeating lose their allocations (training is requeued by its lease,
    which its dead worker no longer renews). Returns the holders whose allocations ended."""
    now = timezone.now()
    dead = [n for n in Node.objects.filter(stopped_at=None) if not is_live(n, now)]
    ended = []
    for node in dead:
        for allocation in live(node):
            ended.append(allocation.holder)
        live(node).update(state=State.ENDED, ended_at=now, end_reason="the node stopped heartbeating")
    if ended:
        transaction.on_commit(wake_training)
    return ended
