"""Writes to the backend registry."""

from __future__ import annotations

import httpx
from django.db import transaction
from django.utils import timezone

from catalog.models import BaseModel
from compute import services as compute
from serving.models import Backend


class BackendError(ValueError):
    pass


@transaction.atomic
def register_backend(
    *,
    name: str,
    url: str,
    base_model: str,
    engine: str = Backend.Engine.BUILTIN,
    served_model_name: str = "",
    api_key: str = "",
    node_id: int | None = None,
) -> Backend:
    """Create or update a replica by name (idempotent, so start-up scripts can call it every time)."""
    if engine not in Backend.Engine.values:
        raise BackendError(f"Unknown engine {engine!r}; use one of {', '.join(Backend.Engine.values)}.")
    if not BaseModel.objects.filter(pk=base_model).exists():
        raise BackendError(f"No base model {base_model!r} in the catalog.")
    backend, _ = Backend.objects.update_or_create(
        name=name,
        defaults={
            "url": url.rstrip("/"),
            "base_model_id": base_model,
            "engine": engine,
            "served_model_name": served_model_name,
            "api_key": api_key,
            "node_id": node_id,
            "enabled": True,
        },
    )
    return backend


def probe(backend: Backend, timeout: float = 3.0) -> bool:
    """Ask a replica for /health and record the answer (beat does, every BACKEND_PROBE_SECONDS)."""
    headers = {"Authorization": f"Bearer {backend.api_key}"} if backend.api_key else {}
    error = ""
    try:
        response = httpx.get(f"{backend.url}/health", headers=headers, timeout=timeout)
        if response.status_code != 200:
            error = f"/health answered {response.status_code}"
    except httpx.HTTPError as exc:
        error = f"{type(exc).__name__}: {exc}"[:500]
    Backend.objects.filter(pk=backend.pk).update(healthy=not error, last_error=error, last_checked_at=timezone.now())
    if not error and backend.node_id is not None:
        compute.heartbeat_node(backend.node_id)  # a runtime that answers keeps its node alive in the pool
    return not error


def disable_backends(*, prefix: str) -> int:
    """Take hand-registered replicas whose names start so out of every route."""
    return Backend.objects.filter(name__startswith=prefix, deployment=None).update(enabled=False, healthy=False)
