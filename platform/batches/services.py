"""Creating and cancelling batches.

A batch is checked whole before anything runs: every model its lines name must be one the
organization may call (else 404, as the synchronous call answers), every line must be a request
its model takes (else the batch fails, the errors naming their lines), and the budgets must hold
the file's worst case at the batch price (else 429 insufficient_quota); nothing is created when
one of these refuses. The worst case of a line is what the gateway would reserve for it: its prompt
bounded from its bytes, and its completion cap (max_tokens, else the model's default) times n.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from django.core.files.storage import default_storage

from batches import lifecycle
from batches.models import Batch, new_batch_id
from billing import pricing
from fine_tuning import batchfile
from fine_tuning import selectors as files
from fine_tuning.models import File
from serving import routing
from serving.gateway import embeddings, inference
from serving.gateway.http import GatewayError
from tenancy import audit
from tenancy.audit import Actor
from tenancy.detached import on_request_thread
from tenancy.errors import ServiceError, render

# The Batch API's endpoints: the ledger route of their calls (a batch's is "batch." + it) and the
# kind of model they call.
ENDPOINTS = {
    "/v1/chat/completions": ("chat.completions", "chat"),
    "/v1/completions": ("completions", "chat"),
    "/v1/embeddings": ("embeddings", "embedding"),
}
COMPLETION_WINDOWS = ("24h",)


@dataclass(frozen=True)
class BatchPrincipal:
    """Who a batch's requests run as: its organization, and the API key that created it (an
    endpoint's access list applies to it as to the key's own calls)."""

    organization_id: int
    key_id: str | None


@dataclass
class Prepared:
    requests: list[tuple[int, str, dict]] = field(default_factory=list)
    worst_case: int = 0
    models: list[str] = field(default_factory=list)
    errors: list[dict] = field(default_factory=list)


def line_error(line: int, code: str | None, message: str, param: str | None = None) -> dict:
    return {"code": code or "invalid_request", "message": message, "param": param, "line": line}


def file_errors(row: File) -> list[dict]:
    """A file that failed validation, as a failed batch's errors (each naming its line)."""
    reported = row.report.get("errors", [])
    found = [line_error(e.get("line") or None, e.get("code"), e.get("message", "")) for e in reported]
    return found or [line_error(None, "invalid_file", row.status_details or "The input file is not valid.")]


def _read(row: File) -> list[tuple[int, str, str, dict]]:
    with default_storage.open(row.storage_key, "rb") as stream:
        return list(batchfile.requests(stream))


def bounds(principal, route: routing.Route, body: dict, endpoint: str) -> tuple[str, int, int]:
    """(what is priced, prompt tokens, completion tokens) at most for one request; raises the
    GatewayError its synchronous call would get."""
    route_name, kind = ENDPOINTS[endpoint]
    if kind == "embedding":
        parsed = embeddings.parse(body)
        return parsed.model, embeddings.token_bound(parsed, route.context_length), 0
    planned = inference.plan(principal, route, body, route_name)
    return planned.served, planned.prompt_bound, planned.completion_bound


async def prepare(principal, row: File, endpoint: str) -> Prepared:
    """The requests of a validated file, their worst case at the batch price, or the lines'
    errors; raises GatewayError 400 for a file whose requests call another endpoint than the
    batch's, and 404 for a model the organization may not call."""
    if row.report.get("url") != endpoint:
        raise GatewayError(
            400,
            f"The file's requests call {row.report.get('url')}, but the batch's endpoint is {endpoint}.",
            param="endpoint",
            code="mismatched_endpoint",
        )
    prepared = Prepared()
    lines = await on_request_thread(_read, row)
    kind = ENDPOINTS[endpoint][1]
    routes: dict[str, routing.Route] = {}
    for _, _, _, body in lines:
        model = body["model"]
        if model not in routes:
            routes[model] = await inference.route_for(principal, model, kind)
    prices: dict[tuple[str, str], pricing.UnitPrice] = {}
    for number, custom_id, _, body in lines:  # one url a file: the validation saw to it
        route = routes[body["model"]]
        try:
            served, prompt, completion = bounds(principal, route, body, endpoint)
        except GatewayError as refused:
            prepared.errors.append(line_error(number, refused.code, f"body: {refused.message}", refused.param))
            continue
        key = (served, route.base_model)
        if key not in prices:
            free = route.endpoint is not None and route.endpoint.dedicated
            price = pricing.FREE if free else await pricing.acurrent(principal.organization_id, *key)
            prices[key] = price.for_batch()
        prepared.worst_case += prices[key].cost(prompt_tokens=prompt, completion_tokens=completion)
        prepared.requests.append((number, custom_id, body))
    prepared.models = sorted(routes)
    return prepared


async def create(
    principal, *, input_file_id: str, endpoint: str, completion_window: str, metadata: dict | None, actor: Actor
) -> Batch:
    organization_id = principal.organization_id
    row = await on_request_thread(files.file, organization_id, input_file_id)
    if row is None or row.deleted_at is not None:
        raise GatewayError(404, f"No such File object: {input_file_id}", param="input_file_id", code="not_found")
    if row.purpose != File.Purpose.BATCH:
        raise GatewayError(
            400,
            f"The file {input_file_id} was uploaded with purpose '{row.purpose}'; a batch's input file has purpose "
            "'batch'.",
            param="input_file_id",
            code="invalid_file_purpose",
        )
    new = lifecycle.NewBatch(
        id=new_batch_id(),
        organization_id=organization_id,
        input_file_id=row.pk,
        endpoint=endpoint,
        completion_window=completion_window,
        metadata=metadata,
        api_key_id=principal.key_id,
        user_id=actor.user.pk if actor.user is not None else None,
    )
    if row.status == File.Status.UPLOADED:
        batch = await on_request_thread(lifecycle.create_validating, new)
    elif row.status == File.Status.ERROR:
        batch = await on_request_thread(lifecycle.create_failed, new, errors=file_errors(row))
    else:
        prepared = await prepare(principal, row, endpoint)
        if prepared.errors:
            batch = await on_request_thread(lifecycle.create_failed, new, errors=prepared.errors)
        else:
            batch = await on_request_thread(
                lifecycle.create,
                new,
                requests=prepared.requests,
                worst_case=prepared.worst_case,
                models_used=prepared.models,
            )
    await on_request_thread(
        audit.record,
        "batch.created",
        actor=actor,
        organization_id=organization_id,
        target=batch,
        data={"input_file_id": row.pk, "endpoint": endpoint, "status": batch.status, "requests": batch.total},
    )
    return batch


async def cancel(principal, batch_id: str, *, actor: Actor) -> Batch | None:
    """Ask a batch to stop (idempotent: a batch cancelling or cancelled already is answered as it
    is); None when the organization has no such batch."""
    batch, changed = await on_request_thread(lifecycle.cancel, principal.organization_id, batch_id)
    if changed:
        await on_request_thread(
            audit.record,
            "batch.cancelled",
            actor=actor,
            organization_id=principal.organization_id,
            target=batch,
            data={"completed": batch.completed, "failed": batch.failed, "total": batch.total},
        )
    return batch


async def start_validating(batch: Batch) -> None:
    """A batch created while its file was being validated, once the validation has ended: it
    starts (held and run) or fails, as it would have at creation. Its model being gone, or the
    budget not holding it, fails it with the reason (there is no caller left to answer)."""
    row = await on_request_thread(File.all_orgs.get, pk=batch.input_file_id)
    if row.status == File.Status.UPLOADED:
        return
    if row.status == File.Status.ERROR:
        await on_request_thread(lifecycle.fail_validating, batch.pk, file_errors(row))
        return
    principal = BatchPrincipal(batch.organization_id, str(batch.created_by_key_id) if batch.created_by_key_id else None)
    try:
        prepared = await prepare(principal, row, batch.endpoint)
        if prepared.errors:
            await on_request_thread(lifecycle.fail_validating, batch.pk, prepared.errors)
            return
        await on_request_thread(
            lifecycle.start_validated,
            batch.pk,
            requests=prepared.requests,
            worst_case=prepared.worst_case,
            models_used=prepared.models,
        )
    except ServiceError as refused:  # a model gone, a line refused, the budget (InsufficientQuota)
        body = render(refused)[0]["error"]
        await on_request_thread(lifecycle.fail_validating, batch.pk, [line_error(None, body["code"], body["message"])])
