"""Endpoints: a model published under its own id, and the one place its status changes.

Lifecycle: creating -> deploying -> ready | failed -> stopped (and back to deploying when started
again). Every change takes the endpoint's row lock, checks the status it moves from, and writes an
audit row. Publishing (a Celery task) places the endpoint on `replicas` of its base model's
replicas, loads a fine-tuned model's adapter there, probes each with a real generation, and marks
the endpoint ready if at least one serves it (failed, with each replica's reason, if none does).
Stopping and deleting unload the adapter where no other live endpoint of the same model needs it.
"""

from __future__ import annotations

import logging
import secrets

from django.db import IntegrityError, transaction
from django.db.models import Q
from django.utils import timezone

from billing import services as billing
from catalog import selectors as catalog
from compute import allocations
from serving import dedicated, deployments, replica_client
from serving import replicas as replica_rows
from serving.models import Backend, Deployment, Endpoint, EndpointReplica, ReplicaState
from serving.protocol import ProtocolError, generation
from tenancy import audit, dispatch, scope, selectors, text
from tenancy.audit import Actor
from tenancy.services import ServiceError

S = Endpoint.Status
# Generation parameters an endpoint may default; the caller's own value wins.
DEFAULTABLE = frozenset({"temperature", "top_p", "max_tokens", "presence_penalty", "frequency_penalty", "seed", "stop"})
MAX_REPLICAS = 16


log = logging.getLogger("serving.endpoints")
# The tasks that carry this state machine's follow-up work (serving.tasks), sent by name: the
# tasks module imports this one, not the other way round.
PUBLISH_TASK = "serving.tasks.publish_endpoint"
CONVERGE_TASK = "serving.tasks.converge_deployment"
UNPUBLISH_TASK = "serving.tasks.unpublish_endpoint"
INT32 = 2**31 - 1  # the largest value of the integer columns the limits are kept in


class EndpointError(ServiceError):
    def __init__(self, message: str, code: str = "invalid_request", param: str | None = None, status: int = 400):
        super().__init__(message, code, param)
        self.status = status


def _resolve_model(organization_id: int, model: str):
    """The base model behind a base or ft: id the organization may use."""
    if model.startswith("ft:"):
        tuned = catalog.fine_tuned_models(organization_id).filter(pk=model).select_related("base_model").first()
        if tuned is not None:
            return tuned.base_model, tuned.adapter_location()
    else:
        base = catalog.visible_base_models(organization_id).filter(pk=model).first()
        if base is not None:
            return base, None
    raise EndpointError(
        f"The model '{model}' does not exist or you do not have access to it.", "model_not_found", "model", 404
    )


def _check_settings(organization_id: int, values: dict) -> dict:
    """Validated endpoint settings (only those given), or EndpointError naming the bad one."""
    clean = {}
    if "name" in values:
        clean["name"] = text.name(values["name"], what="An endpoint's name")
    if "defaults" in values:
        defaults = values["defaults"] or {}
        if not isinstance(defaults, dict):
            raise EndpointError("defaults is an object of generation parameters.", param="defaults")
        for key in defaults:
            if key not in DEFAULTABLE:
                allowed = ", ".join(sorted(DEFAULTABLE))
                raise EndpointError(f"defaults cannot set '{key}' (allowed: {allowed}).", param="defaults")
        try:  # what a caller could send itself: checked by the protocol the gateway parses calls with
            generation.parse_chat({"model": "-", "messages": [{"role": "user", "content": "-"}], **defaults})
        except ProtocolError as problem:
            raise EndpointError(f"defaults.{problem.param}: {problem.message}", param="defaults") from None
        clean["defaults"] = defaults
    if "system_prompt" in values:
        prompt = values["system_prompt"] or ""
        if not isinstance(prompt, str) or len(prompt) > 20_000:
            raise EndpointError("system_prompt is a string of at most 20,000 characters.", param="system_prompt")
        clean["system_prompt"] = prompt
    for field in ("rpm_limit", "tpm_limit", "max_tokens_cap"):
        if field in values:
            value = values[field]
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= INT32):
                raise EndpointError(f"{field} is an integer from 1 to {INT32:,}, or null.", param=field)
            clean[field] = value
    if "allowed_key_ids" in values:
        ids = values["allowed_key_ids"] or []
        if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
            raise EndpointError("allowed_key_ids is a list of API key ids.", param="allowed_key_ids")
        known = selectors.organization_key_ids(organization_id, ids)
        unknown = [i for i in ids if selectors.key_id(i) not in known]
        if unknown:
            raise EndpointError(
                f"No API key '{unknown[0]}' in this organization.", "key_not_found", "allowed_key_ids", 404
            )
        clean["allowed_key_ids"] = sorted(known)
    if "billing_mode" in values:
        if values["billing_mode"] not in Endpoint.Billing.values:
            raise EndpointError("billing_mode is per_token or dedicated.", param="billing_mode")
        clean["billing_mode"] = values["billing_mode"]
    if "replicas" in values:
        count = values["replicas"]
        if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= MAX_REPLICAS:
            raise EndpointError(f"replicas is 1 to {MAX_REPLICAS}.", param="replicas")
        clean["replicas"] = count
    return clean


def _check_affordable(organization_id: int, model: str, base_model: str, billing_mode: str, replicas: int) -> None:
    """A dedicated endpoint starts only if its first minute can be paid for, and its replicas fit
    the organization's compute quota."""
    if billing_mode != Endpoint.Billing.DEDICATED:
        return
    refused = allocations.quota_refusal(organization_id, replicas * replica_rows.ACCELERATORS)
    if refused:
        raise EndpointError(
            f"A dedicated endpoint's {replicas} replicas each hold an accelerator, and {refused}.",
            "compute_quota_exceeded",
            "replicas",
            429,
        )
    reason = dedicated.unpaid_reason(organization_id, model, base_model, replicas)
    if reason is not None:
        raise EndpointError(
            f"A dedicated endpoint is billed per replica-minute, and its first minute cannot be paid for: {reason}",
            "insufficient_quota",
            "billing_mode",
            429,
        )


@scope.scoped
def create(*, organization_id: int, model: str, settings: dict, actor: Actor, created_by_id=None) -> Endpoint:
    base, _ = _resolve_model(organization_id, model)
    if base.kind != "chat":
        raise EndpointError(
            f"Endpoints publish text-generation models; the embedding model '{model}' is called by its id.",
            "model_not_supported",
            "model",
        )
    clean = _check_settings(organization_id, {"name": None, **settings})  # a name is required
    _check_affordable(
        organization_id, model, base.pk, clean.get("billing_mode", Endpoint.Billing.PER_TOKEN), clean.get("replicas", 1)
    )
    taken = EndpointError(f"An endpoint named '{clean['name']}' exists already.", "conflict", "name", 409)
    with transaction.atomic():
        if Endpoint.all_orgs.filter(organization_id=organization_id, name=clean["name"], deleted_at=None).exists():
            raise taken
        try:
            with transaction.atomic():  # two creates with one name at once: the constraint decides
                endpoint = Endpoint.all_orgs.create(
                    id=f"ep-{secrets.token_hex(8)}",
                    organization_id=organization_id,
                    model=model,
                    base_model=base,
                    created_by_id=created_by_id,
                    **clean,
                )
        except IntegrityError:
            raise taken from None
        audit.record(
            "endpoint.created",
            actor=actor,
            organization_id=organization_id,
            target=endpoint,
            data={"model": model, **{k: v for k, v in clean.items() if k != "system_prompt"}},
        )
        _deploy_on_commit(endpoint.pk)
    return endpoint


def _deploy_on_commit(endpoint_id: str) -> None:
    """A dedicated endpoint's own replicas are asked of the pool at once (training that holds
    their accelerators starts to checkpoint now, not when a worker gets to the publishing task);
    then it is published."""

    def deploy() -> None:
        endpoint = Endpoint.all_orgs.select_related("base_model").get(pk=endpoint_id)
        if dedicated.is_dedicated(endpoint):
            deployments.for_endpoint(endpoint, _adapters(endpoint))
            dispatch.send(CONVERGE_TASK, endpoint.pk)
        dispatch.send(PUBLISH_TASK, endpoint_id)

    transaction.on_commit(deploy)


def _adapters(endpoint: Endpoint) -> list[dict]:
    """What a dedicated endpoint's engines load before their probe: its fine-tuned model's adapter."""
    if not endpoint.model.startswith("ft:"):
        return []
    _, adapter = _resolve_model(endpoint.organization_id, endpoint.model)
    return [{"name": endpoint.model, "path": adapter}]


def forget_placements(placement_ids: list) -> None:
    """Placements on replicas that are over (this module owns the replica rows)."""
    EndpointReplica.all_orgs.filter(pk__in=placement_ids).delete()


def candidates(endpoint: Endpoint) -> list[Backend]:
    """The replicas an endpoint is placed on: a dedicated one's own ready replicas; a per-token
    one's on the model's shared replicas, healthy ones first."""
    if dedicated.is_dedicated(endpoint):
        return list(Backend.objects.filter(deployment__key=endpoint.pk, state=ReplicaState.READY).order_by("name"))
    rows = Backend.objects.filter(base_model_id=endpoint.base_model_id, enabled=True).filter(
        Q(deployment=None) | Q(deployment__endpoint=None, state=ReplicaState.READY)
    )
    return list(rows.order_by("-healthy", "name")[: endpoint.replicas])


def _own_replicas_waiting(endpoint: Endpoint) -> tuple[list[str], str]:
    """A dedicated endpoint none of whose own replicas is ready yet: what it waits for, or why it
    failed (its replicas failed, or none can be placed: the quota, no room, no node)."""
    deployment = Deployment.objects.filter(key=endpoint.pk).first()
    if deployment is None:
        return ["its replicas are being placed"], ""
    starting = Backend.objects.filter(deployment=deployment, state=ReplicaState.STARTING).count()
    failed = Backend.objects.filter(deployment=deployment, state=ReplicaState.FAILED).order_by("-ended_at").first()
    if starting:
        return [f"{starting} of its own replicas are starting"], ""
    if failed is not None:
        return [], f"its replica failed: {failed.state_reason}"
    if deployment.waiting_reason:
        return [], deployment.waiting_reason
    return ["its replicas are being placed"], ""


def _locked(endpoint_id: str, organization_id: int | None = None) -> Endpoint:
    rows = Endpoint.all_orgs.select_for_update().filter(pk=endpoint_id, deleted_at=None)
    if organization_id is not None:
        rows = rows.filter(organization_id=organization_id)
    endpoint = rows.first()
    if endpoint is None:
        raise EndpointError(f"No endpoint '{endpoint_id}'.", "not_found", status=404)
    return endpoint


def move(endpoint: Endpoint, to: str, reason: str, actor: Actor) -> None:
    """The one status change; the caller holds the endpoint's row lock."""
    before = endpoint.status
    endpoint.status, endpoint.status_reason = to, reason[:500]
    endpoint.save(update_fields=["status", "status_reason", "updated_at"])
    dedicated.on_status_change(endpoint, before, to)
    audit.record(
        f"endpoint.{to}",
        actor=actor,
        organization_id=endpoint.organization_id,
        target=endpoint,
        data={"from": before, "reason": reason[:500]},
    )


@scope.scoped
@transaction.atomic
def update(endpoint_id: str, *, organization_id: int, changes: dict, actor: Actor) -> Endpoint:
    """Change an endpoint's settings (not its model). A new replica count re-deploys it."""
    endpoint = _locked(endpoint_id, organization_id)
    if "model" in changes and changes["model"] != endpoint.model:
        raise EndpointError(  # what the endpoint is, not a bad value: a conflict with its state
            "An endpoint's model cannot change: publish another endpoint.", "model_immutable", "model", 409
        )
    clean = _check_settings(organization_id, {k: v for k, v in changes.items() if k != "model"})
    if "name" in clean and clean["name"] != endpoint.name:
        taken = Endpoint.all_orgs.filter(organization_id=organization_id, name=clean["name"], deleted_at=None)
        if taken.exclude(pk=endpoint.pk).exists():
            raise EndpointError(f"An endpoint named '{clean['name']}' exists already.", "conflict", "name", 409)
    _change_billing_mode(endpoint, clean)
    for field, value in clean.items():
        setattr(endpoint, field, value)
    endpoint.save()
    audit.record(
        "endpoint.updated",
        actor=actor,
        organization_id=organization_id,
        target=endpoint,
        data={k: v for k, v in clean.items() if k != "system_prompt"},
    )
    if "replicas" in clean and endpoint.status in (S.READY, S.FAILED):
        move(endpoint, S.DEPLOYING, "the number of replicas changed", actor)
        _deploy_on_commit(endpoint.pk)
    return endpoint


def _change_billing_mode(endpoint: Endpoint, clean: dict) -> None:
    """A ready endpoint's time is billed up to the change; from the next minute it is billed the
    new way (the minute of the change at its old rates)."""
    mode = clean.get("billing_mode", endpoint.billing_mode)
    if endpoint.status == S.READY and (mode != endpoint.billing_mode or "replicas" in clean):
        next_minute = dedicated.ceil_minute(timezone.now())
        if dedicated.is_dedicated(endpoint):
            dedicated.bill(endpoint, next_minute)
        if mode == Endpoint.Billing.DEDICATED:
            _check_affordable(
                endpoint.organization_id,
                endpoint.model,
                endpoint.base_model_id,
                mode,
                clean.get("replicas", endpoint.replicas),
            )
            endpoint.billing_mode = mode
            dedicated.begin(endpoint, next_minute)


@scope.scoped
@transaction.atomic
def stop(endpoint_id: str, *, organization_id: int, actor: Actor) -> Endpoint:
    endpoint = _locked(endpoint_id, organization_id)
    if endpoint.status == S.STOPPED:
        return endpoint
    move(endpoint, S.STOPPED, "stopped", actor)
    _undeploy_on_commit(endpoint.pk)
    return endpoint


@scope.scoped
@transaction.atomic
def start(endpoint_id: str, *, organization_id: int, actor: Actor) -> Endpoint:
    endpoint = _locked(endpoint_id, organization_id)
    if endpoint.status not in (S.STOPPED, S.FAILED):
        raise EndpointError(
            f"Endpoint '{endpoint_id}' is {endpoint.status}; only a stopped or failed one starts.",
            "conflict",
            status=409,
        )
    _check_affordable(
        endpoint.organization_id, endpoint.model, endpoint.base_model_id, endpoint.billing_mode, endpoint.replicas
    )
    move(endpoint, S.DEPLOYING, "started", actor)
    _deploy_on_commit(endpoint.pk)
    return endpoint


def stop_unpaid(endpoint: Endpoint, reason: str) -> None:
    """A dedicated endpoint whose next minute cannot be paid for (caller holds its row lock)."""
    move(endpoint, S.STOPPED, f"insufficient_quota: {reason}", Actor.system())
    billing.notify(
        endpoint.organization_id,
        kind="endpoint_stopped",
        level="critical",
        title=f"Dedicated endpoint '{endpoint.name}' was stopped",
        body=f"The dedicated endpoint {endpoint.name} ({endpoint.pk}) was stopped: {reason} "
        "Start it again once the budget allows.",
        data={"endpoint_id": endpoint.pk, "reason": reason},
        action="endpoint.stopped_unpaid",
    )
    _undeploy_on_commit(endpoint.pk)


@scope.scoped
@transaction.atomic
def delete(endpoint_id: str, *, organization_id: int, actor: Actor) -> None:
    """Gone for every call and list; the row stays so usage history keeps its name."""
    endpoint = _locked(endpoint_id, organization_id)
    if endpoint.status != S.STOPPED:
        move(endpoint, S.STOPPED, "deleted", actor)
    endpoint.deleted_at = timezone.now()
    endpoint.save(update_fields=["deleted_at", "updated_at"])
    audit.record("endpoint.deleted", actor=actor, organization_id=organization_id, target=endpoint)
    _undeploy_on_commit(endpoint.pk)


def _undeploy_on_commit(endpoint_id: str) -> None:
    transaction.on_commit(lambda: dispatch.send(UNPUBLISH_TASK, endpoint_id))


def publish(endpoint_id: str) -> Endpoint:
    """The publishing task: place, load, probe, and mark ready or failed."""
    with transaction.atomic():
        endpoint = _locked(endpoint_id)
        if endpoint.status not in (S.CREATING, S.DEPLOYING):
            if endpoint.status in (S.READY, S.FAILED) and dedicated.is_dedicated(endpoint):
                transaction.on_commit(lambda: place_new_replicas(endpoint))  # another own replica is ready
            return endpoint  # stopped meanwhile, or already published by another run
        if endpoint.status == S.CREATING:
            move(endpoint, S.DEPLOYING, "placing on replicas", Actor.system())
    chosen = candidates(endpoint)
    results, waiting, refused = {}, [], ""
    if dedicated.is_dedicated(endpoint) and not chosen:
        waiting, refused = _own_replicas_waiting(endpoint)
    for backend in chosen:
        results[backend.pk] = place(endpoint, backend)
    with transaction.atomic():
        endpoint = _locked(endpoint_id)
        if endpoint.status != S.DEPLOYING:
            return endpoint
        EndpointReplica.all_orgs.filter(endpoint=endpoint).exclude(backend_id__in=list(results)).delete()
        if any(outcome.ok for outcome in results.values()):
            move(endpoint, S.READY, "", Actor.system())
        elif waiting:  # published again when one of its replicas is ready
            endpoint.status_reason = ("; ".join(waiting))[:500]
            endpoint.save(update_fields=["status_reason", "updated_at"])
        elif refused:
            move(endpoint, S.FAILED, refused, Actor.system())
        else:
            reasons = "; ".join(f"{b.name}: {results[b.pk].reason}" for b in chosen)
            reason = reasons or f"no replica serves the base model {endpoint.base_model_id}"
            move(endpoint, S.FAILED, reason, Actor.system())
    return endpoint


@transaction.atomic
def follow_replicas(endpoint_id: str) -> str:
    """The endpoint follows its replicas: ready with none serving becomes failed (with the
    reasons), failed with one serving becomes ready again. Returns its status."""
    endpoint = Endpoint.all_orgs.select_for_update().get(pk=endpoint_id)
    placements = list(EndpointReplica.all_orgs.filter(endpoint=endpoint).select_related("backend"))
    serving = [p for p in placements if p.state == EndpointReplica.State.SERVING]
    if endpoint.status == S.READY and not serving and placements:
        reasons = "; ".join(f"{p.backend.name}: {p.last_error}" for p in placements) or "no replica"
        move(endpoint, S.FAILED, f"no replica serves it ({reasons})", Actor.system())
    elif endpoint.status == S.FAILED and serving:
        move(endpoint, S.READY, "", Actor.system())
    return endpoint.status


def record_replica(placement_id, state: str, reason: str) -> None:
    """A replica's state as the reconciler found it (this module owns the replica rows)."""
    EndpointReplica.all_orgs.filter(pk=placement_id).update(
        state=state, last_error=reason[:500], probed_at=timezone.now()
    )


def upstream_name(endpoint: Endpoint, backend: Backend) -> str:
    """What the endpoint's model is called on a replica: the ft: id as its adapter's name, or the
    replica's own name for the base model."""
    return endpoint.model if endpoint.model.startswith("ft:") else backend.upstream_model


def place(endpoint: Endpoint, backend: Backend) -> replica_client.Outcome:
    """Load what the endpoint needs on a replica and probe it; record the replica's state."""
    outcome = replica_client.Outcome(True)
    if endpoint.model.startswith("ft:"):
        _, adapter = _resolve_model(endpoint.organization_id, endpoint.model)
        outcome = replica_client.load_adapter(backend, name=endpoint.model, path=adapter)
    if outcome.ok:
        outcome = replica_client.probe(backend, model=upstream_name(endpoint, backend))
    if not outcome.ok:
        # The replica's own words (addresses, paths) are for the operator; the tenant reads the reason.
        log.warning("endpoint %s on %s: %s", endpoint.pk, backend.name, outcome.error)
    EndpointReplica.all_orgs.update_or_create(
        endpoint=endpoint,
        backend=backend,
        defaults={
            "organization_id": endpoint.organization_id,
            "state": EndpointReplica.State.SERVING if outcome.ok else EndpointReplica.State.FAILED,
            "last_error": outcome.reason,
            "probed_at": timezone.now(),
        },
    )
    return outcome


def place_new_replicas(endpoint: Endpoint) -> int:
    """A dedicated endpoint's own ready replicas that do not serve it yet are probed and join its
    route (one became ready after the endpoint did, or replaced one whose node was lost)."""
    placed = set(EndpointReplica.all_orgs.filter(endpoint=endpoint).values_list("backend_id", flat=True))
    fresh = [backend for backend in candidates(endpoint) if backend.pk not in placed]
    for backend in fresh:
        place(endpoint, backend)
    return len(fresh)


def unpublish(endpoint_id: str) -> None:
    """The stopping task: unload the adapter where no other live endpoint of the model needs it."""
    endpoint = Endpoint.all_orgs.filter(pk=endpoint_id).first()
    if endpoint is None or endpoint.status != S.STOPPED:
        return
    placements = list(EndpointReplica.all_orgs.filter(endpoint=endpoint).select_related("backend"))
    if Deployment.objects.filter(key=endpoint.pk).exists():  # its own replicas drain and end
        deployments.retire(endpoint.pk, f"the endpoint is {endpoint.status_reason or 'stopped'}")
        dispatch.send(CONVERGE_TASK, endpoint.pk)
        EndpointReplica.all_orgs.filter(endpoint=endpoint).delete()
        return
    if endpoint.model.startswith("ft:"):
        others = (
            EndpointReplica.all_orgs.filter(
                endpoint__model=endpoint.model, endpoint__deleted_at=None, state=EndpointReplica.State.SERVING
            )
            .exclude(endpoint=endpoint)
            .exclude(endpoint__status=S.STOPPED)
        )
        needed = set(others.values_list("backend_id", flat=True))
        for placement in placements:
            if placement.backend_id not in needed:
                replica_client.unload_adapter(placement.backend, name=endpoint.model)
    EndpointReplica.all_orgs.filter(endpoint=endpoint).delete()
