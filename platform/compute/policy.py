"""The pool's scheduling policy as plain functions over plain values: the workers' claims and the
simulator in bench/ run this same code, so what the simulator measures is what the pool does.

Claim order (platform/compute/README.md explains why):
1. the organization's priority class (high, normal, low);
2. fair share: fewer accelerators held now per unit of share, then fewer accelerator-seconds used
   in the recent window per unit of share;
3. age: the earlier queued first.
Walking that order, the first request that fits is placed. One that does not fit (its quota is
spent, or no node has that many free accelerators with that much memory) waits with its reason and
blocks nothing behind it. So that a large request is not overtaken forever, one that has waited
longer than `reserve_after` seconds holds a node that could take it: nothing smaller is placed
there until it starts.
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

GIB = 2**30


@dataclass(frozen=True)
class Request:
    """Work waiting for accelerators: a training job (or, in the simulator, a replica)."""

    id: str
    organization: int | str
    accelerators: int
    memory_bytes: int  # needed on each accelerator
    queued_at: float  # seconds since the epoch


@dataclass
class Tenant:
    """An organization as the policy sees it."""

    priority: int = 0  # higher first
    share: int = 1
    max_accelerators: int | None = None
    in_use: int = 0  # accelerators held now (training and serving)
    usage_seconds: float = 0.0  # accelerator-seconds used in the recent window


@dataclass
class NodeFree:
    """A node's free accelerators at the moment of a claim."""

    name: str
    free: int
    total: int
    memory_bytes: int  # of each accelerator
    schedulable: bool = True


@dataclass(frozen=True)
class Wait:
    """Why a request waits: a stable code (quota, too_big, busy, held) and a sentence for people."""

    code: str
    message: str


@dataclass
class Decision:
    chosen: Request | None = None
    node: str | None = None
    waiting: dict[str, Wait] = field(default_factory=dict)  # request id -> why it waits
    # A request too large for any one node: every node it trains on and how many accelerators of
    # each (the claiming node first; it leads). Empty for a request on one node.
    gang: list[tuple[str, int]] = field(default_factory=list)


def order(requests: Iterable[Request], tenants: Mapping) -> list[Request]:
    """The claim order: priority class, then fair share, then age. Fair share is projected as the
    order is built: each request taken counts as held by its organization, so two organizations
    with equal shares alternate instead of one's whole backlog going first."""
    by_org: dict[str, deque[Request]] = {}
    for request in sorted(requests, key=lambda r: (r.queued_at, r.id)):
        by_org.setdefault(request.organization, deque()).append(request)
    held = {org: (tenants.get(org) or Tenant()).in_use for org in by_org}

    def key(org):
        tenant = tenants.get(org) or Tenant()
        share = max(tenant.share, 1)
        head = by_org[org][0]
        return (-tenant.priority, held[org] / share, tenant.usage_seconds / share, head.queued_at, head.id)

    heap = [(key(org), index, org) for index, org in enumerate(by_org)]
    heapq.heapify(heap)
    ordered = []
    while heap:
        _, index, org = heapq.heappop(heap)
        request = by_org[org].popleft()  # an organization's backlog may be thousands long
        ordered.append(request)
        held[org] += request.accelerators
        if by_org[org]:
            heapq.heappush(heap, (key(org), index, org))
    return ordered


def _gib(size: int) -> str:
    return f"{size / GIB:.1f} GiB"


def _fits(node: NodeFree, request: Request) -> bool:
    return node.schedulable and node.memory_bytes >= request.memory_bytes and node.free >= request.accelerators


def _could_ever_fit(node: NodeFree, request: Request) -> bool:
    return node.schedulable and node.memory_bytes >= request.memory_bytes and node.total >= request.accelerators


def gang(
    nodes: list[NodeFree], request: Request, *, using: str = "free", lead: str | None = None
) -> list[tuple[str, int]]:
    """The fewest nodes that together hold the request's accelerators, the same number on each
    (one launcher per node starts as many processes as every other), with the memory it needs;
    with `lead`, that node among them, first. `using` "total" asks whether it could ever fit.
    Empty when there is no such set."""
    able = [n for n in nodes if n.schedulable and n.memory_bytes >= request.memory_bytes and getattr(n, using) > 0]
    for count in range(2, len(able) + 1):
        if request.accelerators % count:
            continue
        each = request.accelerators // count
        members = sorted((n for n in able if getattr(n, using) >= each), key=lambda n: (getattr(n, using), n.name))
        if lead is not None:
            if lead not in {n.name for n in members}:
                continue
            members.sort(key=lambda n: n.name != lead)  # stable: the rest keep the tightest-first order
        if len(members) >= count:
            return [(n.name, each) for n in members[:count]]
    return []


def _why_waiting(request: Request, nodes: list[NodeFree]) -> Wait:
    need = f"{request.accelerators} accelerator{'s' if request.accelerators != 1 else ''}"
    if request.memory_bytes:
        need += f" with {_gib(request.memory_bytes)} each"
    if not any(_could_ever_fit(node, request) for node in nodes) and not gang(nodes, request, using="total"):
        largest = max(nodes, key=lambda n: (n.memory_bytes, n.total), default=None)
        have = (
            f"the largest node has {largest.total} of {_gib(largest.memory_bytes)}" if largest else "the pool is empty"
        )
        return Wait(
            "too_big", f"It needs {need}, more than any node in the pool has ({have}); it waits until one joins."
        )
    free = ", ".join(f"{n.name}: {n.free}/{n.total} free of {_gib(n.memory_bytes)}" for n in nodes if n.schedulable)
    return Wait("busy", f"Waiting for {need} to free up ({free or 'no node is up'}).")


def choose(
    requests: Iterable[Request],
    tenants: Mapping,
    nodes: list[NodeFree],
    *,
    now: float,
    on: str | None = None,
    reserve_after: float = math.inf,
    explain: bool = True,
) -> Decision:
    """The request to place next and where, and why each request before it waits. With `on`, only
    that node may be chosen (a worker claims for its own node); the others still tell the reasons.
    Without `explain` the reasons carry their code only (the simulator's millions of decisions)."""
    decision = Decision()
    reserved: set[str] = set()
    for request in order(requests, tenants):
        tenant = tenants.get(request.organization) or Tenant()
        if tenant.max_accelerators is not None and tenant.in_use + request.accelerators > tenant.max_accelerators:
            decision.waiting[request.id] = Wait(
                "quota",
                f"Your organization's quota is {tenant.max_accelerators} accelerators at once and "
                f"{tenant.in_use} are in use; it starts when some are released."
                if explain
                else "",
            )
            continue
        open_nodes = [n for n in nodes if n.name not in reserved]
        fitting = sorted((n for n in open_nodes if _fits(n, request)), key=lambda n: (n.free, n.name))
        if on is not None:
            fitting = [n for n in fitting if n.name == on]
            if not fitting and any(_fits(n, request) for n in open_nodes):
                continue  # another node's worker takes it
        if fitting:
            decision.chosen, decision.node = request, fitting[0].name  # the tightest fit keeps big holes open
            return decision
        if not any(_could_ever_fit(n, request) for n in nodes) and gang(open_nodes, request):
            # Too large for any one node: gang-scheduled over several, all of them at once or not at
            # all, led by the node that claims it.
            members = gang(open_nodes, request, lead=on)
            if members:
                decision.chosen, decision.node, decision.gang = request, members[0][0], members
                return decision
            continue  # a gang without this node: the other nodes' workers take it
        holdable = [n for n in open_nodes if _could_ever_fit(n, request)]
        if explain:
            reason = _why_waiting(request, nodes)
        else:
            reason = Wait("busy" if any(_could_ever_fit(n, request) for n in nodes) else "too_big", "")
        if reason.code == "busy" and holdable and now - request.queued_at > reserve_after:
            held = max(holdable, key=lambda n: (n.free, n.name))
            reserved.add(held.name)
            note = f" It has waited long, so {held.name} is held for it." if explain else ""
            reason = Wait("held", reason.message + note)
        decision.waiting[request.id] = reason
    return decision


def estimate_starts(
    queue: list[tuple[Request, float | None]],
    nodes: list[tuple[str, int, list[float]]],
    *,
    now: float,
) -> dict[str, float | None]:
    """When each queued request would start if nothing else changed: the queue in claim order with
    each request's expected duration (None: unknown), and each node's accelerator memory and the
    time each of its accelerators frees (math.inf: not known). Requests are laid onto the
    accelerators in order; a start that depends on an unknown duration is None, never a guess."""
    free_at = {name: sorted(times) for name, _, times in nodes}
    memory = {name: size for name, size, _ in nodes}
    starts: dict[str, float | None] = {}
    for request, duration in queue:
        best: tuple[float, str] | None = None
        for name, times in free_at.items():
            if memory[name] < request.memory_bytes or len(times) < request.accelerators:
                continue
            start = max(now, times[request.accelerators - 1])
            if best is None or start < best[0]:
                best = (start, name)
        if best is None:
            starts[request.id] = None
            continue
        start, name = best
        starts[request.id] = start if math.isfinite(start) else None
        end = start + duration if duration is not None else math.inf
        times = free_at[name]
        free_at[name] = sorted([end] * request.accelerators + times[request.accelerators :])
    return starts


def jain_index(values: Iterable[float]) -> float:
    """Jain's fairness index: 1 when all are equal, 1/n when one has everything."""
    values = list(values)
    total = sum(values)
    squares = sum(v * v for v in values)
    return (total * total) / (len(values) * squares) if squares else 1.0


@dataclass(frozen=True)
class Running:
    """A training allocation that could make room for a replica."""

    id: str
    organization: int | str
    accelerators: int
    started_at: float
    lent: bool = False  # on accelerators an idle endpoint lent: the first to give them back


def preemption_victims(running: Iterable[Running], need: int, tenants: Mapping) -> list[Running] | None:
    """The training to stop so that `need` accelerators free up: borrowed capacity first, then the
    lowest priority class, then the most recently started (the least work since its last
    checkpoint and start-up). None if stopping all of it would not be enough."""

    def key(run: Running):
        tenant = tenants.get(run.organization) or Tenant()
        return (not run.lent, tenant.priority, -run.started_at, run.id)

    chosen, freed = [], 0
    for run in sorted(running, key=key):
        if freed >= need:
            break
        chosen.append(run)
        freed += run.accelerators
    return chosen if freed >= need else None
