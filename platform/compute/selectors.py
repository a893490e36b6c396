"""Reads of the pool: workers' states, training capacity, what is held now, and utilisation."""

from __future__ import annotations

from datetime import datetime, timedelta

from django.conf import settings
from django.db.models import DurationField, ExpressionWrapper, F, Sum
from django.utils import timezone

from compute.models import Allocation, Node, OrganizationCompute, Worker


def state(worker: Worker) -> str:
    """stopped (said so), offline (missed three heartbeats), busy (on a job) or idle."""
    if worker.stopped_at:
        return "stopped"
    if worker.last_heartbeat_at < timezone.now() - timedelta(seconds=3 * settings.WORKER_HEARTBEAT_SECONDS):
        return "offline"
    return "busy" if worker.current_job_id else "idle"


def training_capacity() -> dict[str, int]:
    """How many workers that train (those consuming the fine-tuning queue) are idle and busy now."""
    counts = {"idle": 0, "busy": 0}
    for worker in Worker.objects.filter(stopped_at=None):
        if settings.FINE_TUNING_QUEUE in (worker.queues or []):
            found = state(worker)
            if found in counts:
                counts[found] += 1
    return counts


def _overlap(start, end, since, until) -> float:
    if start is None:
        return 0.0
    return max(0.0, (min(end or until, until) - max(start, since)).total_seconds())


def _merged_seconds(intervals: list[tuple], since, until) -> float:
    """Seconds covered by the union of the intervals within the window (a lent accelerator is
    held by a replica and a job at once, and is busy once)."""
    clipped = sorted((max(s, since), min(e or until, until)) for s, e in intervals if s is not None)
    total, current_start, current_end = 0.0, None, None
    for start, end in clipped:
        if end <= start:
            continue
        if current_end is None or start > current_end:
            if current_end is not None:
                total += (current_end - current_start).total_seconds()
            current_start, current_end = start, end
        else:
            current_end = max(current_end, end)
    if current_end is not None:
        total += (current_end - current_start).total_seconds()
    return total


def utilisation(since: datetime, until: datetime | None = None, *, organization_id: int | None = None) -> dict:
    """Accelerator-seconds in [since, until): for each node, what it offered while it was up and
    how much of it training and serving held (the rest idle); for each accelerator, how long it was
    held; for each organization, what it held for training and for serving. With organization_id,
    only that organization's figures (and no other organization's)."""
    until = until or timezone.now()
    rows = Allocation.objects.filter(started_at__lt=until).exclude(ended_at__lte=since).exclude(started_at=None)
    if organization_id is not None:
        rows = rows.filter(organization_id=organization_id)
    allocations = list(rows.values("node_id", "organization_id", "kind", "devices", "started_at", "ended_at"))
    organizations: dict = {}
    for row in allocations:
        seconds = _overlap(row["started_at"], row["ended_at"], since, until) * len(row["devices"])
        entry = organizations.setdefault(row["organization_id"], {"training": 0.0, "serving": 0.0})
        entry[row["kind"]] += seconds
    if organization_id is not None:
        return {"since": since, "until": until, "organizations": organizations}
    nodes, accelerators = [], []
    for node in Node.objects.prefetch_related("accelerators"):
        end = (
            until if node.stopped_at is None and node.last_heartbeat_at >= until - _grace() else node.last_heartbeat_at
        )
        available = _overlap(node.registered_at, end, since, until) * node.accelerator_count
        mine = [r for r in allocations if r["node_id"] == node.pk]
        held = {"training": 0.0, "serving": 0.0}
        for accelerator in node.accelerators.all():
            spans = [(r["started_at"], r["ended_at"]) for r in mine if accelerator.index in r["devices"]]
            busy = _merged_seconds(spans, since, until)
            for kind in held:
                held[kind] += _merged_seconds(
                    [
                        (r["started_at"], r["ended_at"])
                        for r in mine
                        if r["kind"] == kind and accelerator.index in r["devices"]
                    ],
                    since,
                    until,
                )
            accelerators.append({"node": node.name, "index": accelerator.index, "name": accelerator.name, "busy": busy})
        busy = sum(a["busy"] for a in accelerators if a["node"] == node.name)
        nodes.append(
            {
                "node": node.name,
                "accelerator": node.accelerator,
                "count": node.accelerator_count,
                "available": available,
                "training": held["training"],
                "serving": held["serving"],
                "busy": busy,
                "idle": max(0.0, available - busy),
                "utilisation": busy / available if available else None,
            }
        )
    return {
        "since": since,
        "until": until,
        "nodes": nodes,
        "accelerators": accelerators,
        "organizations": organizations,
    }


def _grace() -> timedelta:
    return timedelta(seconds=3 * settings.WORKER_HEARTBEAT_SECONDS)


def held_now(organization_id: int | None = None) -> list[Allocation]:
    """Live allocations (of one organization, if given), with their nodes."""
    rows = Allocation.objects.exclude(state=Allocation.State.ENDED).select_related("node", "organization")
    if organization_id is not None:
        rows = rows.filter(organization_id=organization_id)
    return list(rows.order_by("node__name", "created_at"))


def nodes() -> list[Node]:
    return list(Node.objects.prefetch_related("accelerators").order_by("name"))


def organization_settings(organization_id: int) -> OrganizationCompute:
    """The organization's priority class, share and quota (the defaults if none were set)."""
    found = OrganizationCompute.objects.filter(organization_id=organization_id).first()
    return found or OrganizationCompute(organization_id=organization_id)


def accelerator_seconds_total(now: datetime | None = None) -> dict[tuple[str, str], float]:
    """Accelerator-seconds ever held, by node and kind (a Prometheus counter: its rate over a
    node's accelerator count is the node's utilisation). The ended history is summed by the
    database, so a scrape reads one row per node and kind plus the live allocations."""
    now = now or timezone.now()
    # Grouped by how many accelerators too: SQLite cannot multiply a duration in SQL.
    duration = ExpressionWrapper(F("ended_at") - F("started_at"), output_field=DurationField())
    ended = (
        Allocation.objects.filter(state=Allocation.State.ENDED)
        .exclude(started_at=None)
        .exclude(ended_at=None)
        .values_list("node__name", "kind", "accelerators")
        .annotate(held=Sum(duration))
        .order_by()
    )
    totals: dict[tuple[str, str], float] = {}
    for node, kind, count, held in ended:
        totals[(node, kind)] = totals.get((node, kind), 0.0) + count * held.total_seconds()
    live = Allocation.objects.exclude(state=Allocation.State.ENDED).exclude(started_at=None)
    for node, kind, count, started in live.values_list("node__name", "kind", "accelerators", "started_at"):
        totals[(node, kind)] = totals.get((node, kind), 0.0) + count * (now - started).total_seconds()
    return totals
