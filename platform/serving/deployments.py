"""Deployments: what the pool runs of each model, and the one place their replica counts change.

A catalog base model's serving policy (engine, dtype, min and max replicas, the concurrent requests
a replica should carry, the idle time before scaling down) becomes its shared deployment, which
serves every per-token call of the model and of its fine-tuned adapters. A dedicated endpoint gets
a deployment of its own: its `replicas` processes, its adapter loaded in each, its organization
paying for them. `desired` moves only here, under the row's lock, and every move is an event with
the numbers that decided it. The replicas that carry it out are serving.replicas'.
"""

from __future__ import annotations

from django.db import transaction
from django.utils import timezone

from catalog.models import BaseModel
from serving.models import Deployment, DeploymentEvent, Endpoint

SHARED_PREFIX = "model:"


def shared_key(base_model_id: str) -> str:
    return f"{SHARED_PREFIX}{base_model_id}"


def _policy(base: BaseModel) -> dict:
    return {
        "engine": base.serving_engine,
        "dtype": base.serving_dtype,
        "min_replicas": base.min_replicas,
        "max_replicas": max(base.max_replicas, base.min_replicas),
        "target_concurrency": base.target_concurrency,
        "idle_seconds": base.scale_down_idle_seconds,
    }


def event(deployment: Deployment, kind: str, message: str, **data) -> None:
    DeploymentEvent.objects.create(
        deployment=deployment,
        organization_id=deployment.organization_id,
        kind=kind,
        message=message[:500],
        data=data,
    )


@transaction.atomic
def for_model(base: BaseModel) -> Deployment:
    """The model's shared deployment, following its catalog policy (a change in the back office
    applies at the next pass: the count is brought inside the new bounds)."""
    policy = _policy(base)
    deployment, created = Deployment.objects.select_for_update().get_or_create(
        key=shared_key(base.pk), defaults={"base_model": base, **policy, "desired": policy["min_replicas"]}
    )
    if created:
        event(deployment, "created", f"serving {base.pk} with {policy['engine']}", **policy)
        return deployment
    changed = {field: value for field, value in policy.items() if getattr(deployment, field) != value}
    if changed:
        for field, value in changed.items():
            setattr(deployment, field, value)
        bounded = min(max(deployment.desired, deployment.min_replicas), deployment.max_replicas)
        event(deployment, "policy", "the model's serving policy changed", **changed)
        if bounded != deployment.desired:
            _move(deployment, bounded, "policy", "the count follows the new bounds")
        deployment.save()
    return deployment


@transaction.atomic
def for_endpoint(endpoint: Endpoint, adapters: list[dict]) -> Deployment:
    """A dedicated endpoint's own deployment: exactly its replica count, its adapters preloaded."""
    base = endpoint.base_model
    deployment, created = Deployment.objects.select_for_update().get_or_create(
        key=endpoint.pk,
        defaults={
            "base_model": base,
            "endpoint": endpoint,
            "organization_id": endpoint.organization_id,
            "engine": base.serving_engine,
            "dtype": base.serving_dtype,
            "adapters": adapters,
        },
    )
    deployment.min_replicas = deployment.max_replicas = endpoint.replicas
    deployment.adapters = adapters
    if deployment.desired != endpoint.replicas:
        _move(deployment, endpoint.replicas, "endpoint", f"the endpoint asks for {endpoint.replicas} replicas")
    deployment.save()
    if created:
        event(deployment, "created", f"dedicated replicas of {endpoint.model} with {deployment.engine}")
    return deployment


@transaction.atomic
def retire(key: str, reason: str) -> None:
    """No replica any more (a stopped or deleted endpoint): its replicas drain and end."""
    deployment = Deployment.objects.select_for_update().filter(key=key).first()
    if deployment is not None and deployment.desired:
        deployment.min_replicas = 0
        _move(deployment, 0, "endpoint", reason)
        deployment.save()


def _move(deployment: Deployment, to: int, kind: str, message: str, **numbers) -> None:
    before = deployment.desired
    deployment.desired = to
    event(deployment, kind, f"{before} -> {to} replicas: {message}", before=before, after=to, **numbers)


@transaction.atomic
def scale(key: str, to: int, message: str, **numbers) -> bool:
    """The scaler's decision (inside the bounds). Returns whether the count changed."""
    deployment = Deployment.objects.select_for_update().get(key=key)
    bounded = min(max(to, deployment.min_replicas), deployment.max_replicas)
    if bounded == deployment.desired:
        return False
    _move(deployment, bounded, "scale_up" if bounded > deployment.desired else "scale_down", message, **numbers)
    deployment.busy_since = None
    deployment.save()
    return True


@transaction.atomic
def wake(base_model_id: str) -> Deployment | None:
    """A call came for a model none of whose replicas serves: a deployment scaled to zero asks
    for one. None when the model cannot be deployed (disabled, or max_replicas 0)."""
    base = BaseModel.objects.exclude(status=BaseModel.Status.DISABLED).filter(pk=base_model_id).first()
    if base is None:
        return None
    deployment = for_model(base)
    deployment = Deployment.objects.select_for_update().get(pk=deployment.pk)
    deployment.active_at = timezone.now()
    if deployment.desired == 0 and deployment.max_replicas > 0:
        _move(deployment, 1, "scale_up", "a call came while it was scaled to zero", load=1, replicas=0)
    deployment.save()
    return deployment


@transaction.atomic
def record_reading(key: str, **fields) -> None:
    """The scaler's bookkeeping between passes (busy_since, active_at, observed, waiting_reason)."""
    Deployment.objects.filter(key=key).update(**fields, updated_at=timezone.now())
