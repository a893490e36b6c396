"""Which replicas can serve a model id for an organization.

Base model ids, `ft:` fine-tuned models (a base model's replicas plus an adapter) and `ep-`
endpoints (their model's route, narrowed to the replicas that passed their probe, with the
endpoint's defaults, limits and access list) all resolve through `resolve`.
Routes are cached per process for a few seconds (GATEWAY_ROUTE_CACHE_SECONDS), per organization,
so the hot path does not query the database on every call.
"""

from __future__ import annotations

import logging
import random
import time
from dataclasses import dataclass, replace

from django.conf import settings
from django.db import DatabaseError
from django.db.models import Q

from catalog import selectors as catalog
from serving.models import Backend, Endpoint, EndpointReplica, ReplicaState
from tenancy.detached import run_detached

log = logging.getLogger("serving.routing")


@dataclass(frozen=True)
class Replica:
    name: str
    url: str
    engine: str
    api_key: str
    upstream_model: str
    healthy: bool
    pooled: bool = False  # started by the pool (so with the platform's engine options), not registered by hand


@dataclass(frozen=True)
class Route:
    requested_model: str
    base_model: str
    upstream_model: str | None  # None: each replica's own name for the base model
    replicas: tuple[Replica, ...]
    adapter_path: str | None = None  # for ft: models, the adapter to load on a replica that lacks it
    context_length: int = 0
    default_max_tokens: int = 1024  # the cap sent upstream when a request sets no max_tokens
    endpoint: EndpointSettings | None = None  # set when the id named a published endpoint
    kind: str = "chat"  # what the model serves: "chat" (generation) | "embedding"
    features: frozenset[str] = frozenset()  # of catalog.models.GENERATION_FEATURES


@dataclass(frozen=True)
class EndpointSettings:
    """What an endpoint adds to its model's route, cached with it."""

    id: str
    model: str  # the catalog model it serves (what is priced and metered)
    status: str
    status_reason: str
    defaults: tuple[tuple[str, object], ...]
    system_prompt: str
    max_tokens_cap: int | None
    rpm_limit: int | None
    tpm_limit: int | None
    allowed_key_ids: frozenset[str]
    dedicated: bool = False  # billed per replica-minute: calls are not charged per token


class ModelNotFound(Exception):
    pass


_cache: dict[tuple[int, str], tuple[float, Route]] = {}
_marked_down: dict[str, float] = {}  # replica name -> until when (this process saw it refuse connections)


def _load_endpoint(organization_id: int, endpoint_id: str) -> Route:
    """An endpoint's route: its model's, narrowed to the replicas that passed their probe, with the
    endpoint's settings. Stopped or deleted: not found. Not ready: no replica (the gateway answers
    503 and says why)."""
    endpoint = (
        Endpoint.all_orgs.filter(pk=endpoint_id, organization_id=organization_id, deleted_at=None)
        .exclude(status=Endpoint.Status.STOPPED)
        .first()
    )
    if endpoint is None:
        raise ModelNotFound(endpoint_id)
    inner = _load(organization_id, endpoint.model)
    # The replicas that passed its probe: its model's shared ones, or a dedicated endpoint's own.
    serving = [
        placement.backend
        for placement in EndpointReplica.all_orgs.filter(
            endpoint=endpoint,
            state=EndpointReplica.State.SERVING,
            backend__enabled=True,
            backend__state__in=[ReplicaState.REGISTERED, ReplicaState.READY],
        ).select_related("backend")
    ]
    ready = endpoint.status == Endpoint.Status.READY
    settings_ = EndpointSettings(
        id=endpoint.pk,
        model=endpoint.model,
        status=endpoint.status,
        status_reason=endpoint.status_reason,
        defaults=tuple(sorted(endpoint.defaults.items())),
        system_prompt=endpoint.system_prompt,
        max_tokens_cap=endpoint.max_tokens_cap,
        rpm_limit=endpoint.rpm_limit,
        tpm_limit=endpoint.tpm_limit,
        allowed_key_ids=frozenset(endpoint.allowed_key_ids),
        dedicated=endpoint.billing_mode == Endpoint.Billing.DEDICATED,
    )
    # A per-token endpoint is served wherever its model is (the adapter is loaded on first use),
    # so replicas of the shared deployment that come and go need no re-publishing.
    own = endpoint.billing_mode == Endpoint.Billing.DEDICATED
    replicas = (tuple(_replica(b) for b in serving) if own else inner.replicas) if ready else ()
    return replace(inner, requested_model=endpoint_id, replicas=replicas, endpoint=settings_)


def _replica(backend: Backend) -> Replica:
    return Replica(
        backend.name,
        backend.url.rstrip("/"),
        backend.engine,
        backend.api_key,
        backend.upstream_model,
        backend.healthy,
        backend.deployment_id is not None,
    )


def _load(organization_id: int, model_id: str) -> Route:
    if model_id.startswith("ep-"):
        return _load_endpoint(organization_id, model_id)
    adapter = None
    if model_id.startswith("ft:"):
        tuned = catalog.fine_tuned_models(organization_id).filter(pk=model_id).select_related("base_model").first()
        if tuned is None:
            raise ModelNotFound(model_id)
        base, adapter = tuned.base_model, tuned.adapter_location()
    else:
        base = catalog.visible_base_models(organization_id).filter(pk=model_id).first()
        if base is None:
            raise ModelNotFound(model_id)
    # Replicas registered by hand, and the ready ones of the model's shared deployment (a dedicated
    # endpoint's own replicas serve only it).
    backends = Backend.objects.filter(base_model=base, enabled=True).filter(
        Q(deployment=None) | Q(deployment__endpoint=None, state=ReplicaState.READY)
    )
    replicas = tuple(_replica(b) for b in backends)
    # An ft: model is served by its base model's replicas, under its own id as the adapter name.
    return Route(
        model_id,
        base.pk,
        model_id if adapter else None,
        replicas,
        adapter,
        base.context_length,
        base.default_max_tokens,
        kind=base.kind,
        features=frozenset(base.features),
    )


async def _load_async(organization_id: int, model_id: str) -> Route:
    # A worker thread that gives its connection back at once: requests do not hold one each while
    # they stream.
    return await run_detached(_load, organization_id, model_id)


async def resolve(organization_id: int, model_id: str) -> Route:
    now = time.monotonic()
    cached = _cache.get((organization_id, model_id))
    if cached and cached[0] > now:
        return cached[1]
    try:
        route = await _load_async(organization_id, model_id)
    except DatabaseError as error:
        if not cached:
            raise
        # The database is away: keep serving the route last seen (usage waits in the metering outbox).
        log.warning("route of %s not refreshed (%s); using the one last seen", model_id, error)
        route = cached[1]
    _cache[(organization_id, model_id)] = (now + settings.GATEWAY_ROUTE_CACHE_SECONDS, route)
    return route


async def refresh(organization_id: int, model_id: str) -> Route:
    """The route read now, not from the cache (a caller waiting for a replica to come up)."""
    route = await _load_async(organization_id, model_id)
    _cache[(organization_id, model_id)] = (time.monotonic() + settings.GATEWAY_ROUTE_CACHE_SECONDS, route)
    return route


def attempt_order(route: Route) -> list[Replica]:
    """Healthy replicas first (in random order, to spread load), then the rest as a last resort."""
    now = time.monotonic()
    up = [r for r in route.replicas if r.healthy and _marked_down.get(r.name, 0) < now]
    rest = [r for r in route.replicas if r not in up]
    random.shuffle(up)
    return up + rest


def mark_down(replica: Replica, seconds: float = 5.0) -> None:
    _marked_down[replica.name] = time.monotonic() + seconds
