"""The scaler: a periodic pass (SERVING_SCALE_SECONDS) above serving.deployments and
serving.replicas that follows each deployment's measured load and brings its replicas to the count.

Load is what the ready replicas' engines report (requests running and waiting; Batch API requests,
which our runtime counts apart, neither add replicas nor let one go while they run). A shared
deployment scales up by one when the load per replica stays above its target for
SERVING_SCALE_UP_AFTER_SECONDS, and down by one when, for its idle time, no request came (down to
its minimum, zero included) or the load would have fit on one replica fewer at half the target. A
dedicated endpoint's deployment keeps exactly its replica count. Then the replicas follow the
count: ones lost with their node end, missing ones are placed (serving.placement), extra ones
drain — the ones still starting first, then the least loaded.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from catalog.models import BaseModel
from serving import deployments, engine_load, replicas
from serving.models import Backend, Deployment, ReplicaState

log = logging.getLogger("serving.autoscale")
R = ReplicaState
RETRY_FAILED = timedelta(minutes=2)


def scale_all(now: datetime | None = None) -> dict[str, int]:
    """Returns each deployment's desired count afterwards."""
    now = now or timezone.now()
    for base in BaseModel.objects.exclude(status=BaseModel.Status.DISABLED):
        deployments.for_model(base)
    for key in Deployment.objects.filter(base_model__status=BaseModel.Status.DISABLED).values_list("key", flat=True):
        deployments.retire(key, "the model is disabled")
    outcome = {}
    for deployment in Deployment.objects.select_related("base_model"):
        try:
            follow_load(deployment, now)
            deployment.refresh_from_db()
            converge(deployment, now)
            outcome[deployment.key] = deployment.desired
        except Exception:
            log.exception("scaling %s failed; the next pass retries", deployment.key)
    return outcome


def follow_load(deployment: Deployment, now: datetime) -> None:
    ready = list(Backend.objects.filter(deployment=deployment, state=R.READY))
    readings = {b.name: engine_load.read(b) for b in ready}
    seen = {name: r for name, r in readings.items() if r is not None}
    # Batch API work neither adds replicas (it takes idle capacity) nor lets the ones it runs on go.
    load = sum(r.interactive for r in seen.values())
    batch = sum(r.batch for r in seen.values())
    before = deployment.observed.get("finished", {})
    finished = {name: r.finished for name, r in seen.items()}
    called = load > 0 or batch > 0 or any(before.get(name) not in (None, count) for name, count in finished.items())
    active_at = now if called else deployment.active_at
    in_flight = {name: r.in_flight for name, r in seen.items()}
    observed = {**deployment.observed, "finished": finished, "in_flight": in_flight, "load": load, "batch": batch}
    busy_since = deployment.busy_since
    if deployment.dedicated:
        deployments.record_reading(deployment.key, observed=observed, active_at=active_at)
        return
    count, target = len(ready), deployment.target_concurrency
    if count and load / count > target:
        busy_since = busy_since or now
        held = (now - busy_since).total_seconds()
        if held >= settings.SERVING_SCALE_UP_AFTER_SECONDS and deployment.desired < deployment.max_replicas:
            deployments.scale(
                deployment.key,
                deployment.desired + 1,
                f"{load:g} requests in flight on {count} replicas, above the target of {target} each for {held:.0f} s",
                load=load,
                replicas=count,
                target=target,
            )
            deployments.record_reading(deployment.key, observed=observed, active_at=active_at)
            return
    else:
        busy_since = None
    fewer_since = _fits_fewer_since(deployment, load, now)
    observed["fits_fewer_since"] = fewer_since.isoformat() if fewer_since else None
    deployments.record_reading(deployment.key, observed=observed, active_at=active_at, busy_since=busy_since)
    idle = timedelta(seconds=deployment.idle_seconds)
    if deployment.desired <= deployment.min_replicas or batch:
        return
    if active_at is None or now - active_at >= idle:
        quiet = (now - active_at).total_seconds() if active_at else None
        deployments.scale(
            deployment.key,
            deployment.desired - 1,
            "no request for " + (f"{quiet:.0f} s" if quiet is not None else "as long as it has run"),
            load=load,
            replicas=count,
            idle_seconds=deployment.idle_seconds,
        )
    elif fewer_since is not None and now - fewer_since >= idle:
        deployments.scale(
            deployment.key,
            deployment.desired - 1,
            f"{load:g} requests in flight fit on {deployment.desired - 1} replicas at half the target of {target} "
            f"for {deployment.idle_seconds} s",
            load=load,
            replicas=count,
            target=target,
        )


def _fits_fewer_since(deployment: Deployment, load: float, now: datetime) -> datetime | None:
    fewer = deployment.desired - 1
    if fewer < 1 or load > deployment.target_concurrency * fewer / 2:
        return None
    since = deployment.observed.get("fits_fewer_since")
    return datetime.fromisoformat(since) if since else now


@transaction.atomic
def converge(deployment: Deployment, now: datetime | None = None) -> str:
    """Bring the replicas to the desired count. Returns why wanted replicas are not placed ('' if
    they are). Under the deployment's row lock: the scaler, a call waking the model and an
    endpoint's change may converge it at once, and must not place one replica twice."""
    now = now or timezone.now()
    deployment = Deployment.objects.select_for_update(of=("self",)).select_related("base_model").get(pk=deployment.pk)
    replicas.lost(deployment)
    live = list(replicas.live(deployment).order_by("created_at", "pk"))
    reason = ""
    if len(live) < deployment.desired:
        # A replica still draining is taken back before a new one is placed: its engine is up, and
        # its accelerator may be the only one free (a call right after a scale to zero).
        draining = Backend.objects.filter(deployment=deployment, state=R.DRAINING).order_by("-pk")
        for backend in draining[: deployment.desired - len(live)]:
            if replicas.take_back(backend.pk):
                live.append(backend)
    if len(live) < deployment.desired:
        recent = (
            Backend.objects.filter(deployment=deployment, state=R.FAILED, ended_at__gte=now - RETRY_FAILED)
            .order_by("-ended_at")
            .first()
        )
        if recent is not None:
            reason = f"its last replica failed ({recent.state_reason}); it is tried again after two minutes"
        else:
            for _ in range(deployment.desired - len(live)):
                placed = replicas.add(deployment)
                if isinstance(placed, str):
                    reason = placed
                    break
    elif len(live) > deployment.desired:
        for backend in _extras(live, len(live) - deployment.desired, deployment):
            replicas.drain(backend.pk, "scaled down" if deployment.desired else "scaled to zero")
    if reason != deployment.waiting_reason:
        deployments.record_reading(deployment.key, waiting_reason=reason[:500])
    return reason


def _extras(live: list[Backend], how_many: int, deployment: Deployment) -> list[Backend]:
    loads = deployment.observed.get("in_flight", {})
    starting = [b for b in live if b.state == R.STARTING]
    ready = sorted((b for b in live if b.state == R.READY), key=lambda b: (loads.get(b.name, 0), -b.pk))
    return (list(reversed(starting)) + ready)[:how_many]


def cold_start(base_model_id: str) -> str:
    """A call came for a model with no ready replica: scale it up from zero and place the replica
    now (the call waits for it). Returns why it cannot be served soon ('' when a replica is coming)."""
    deployment = deployments.wake(base_model_id)
    if deployment is None:
        return "the model is not served"
    if replicas.live(deployment).exists():
        return ""
    return converge(deployment)
