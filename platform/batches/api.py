"""/v1/batches — OpenAI's Batch API: create, retrieve, list (newest first, `after` and `limit`),
cancel. The batch object is OpenAI's, with `usage` in tokens."""

from __future__ import annotations

import orjson
from django.http import HttpResponse

from batches import selectors, services
from batches.models import Batch
from serving.gateway.http import GatewayError, authenticate, gateway_view
from serving.gateway.inference import request_json
from tenancy.audit import Actor
from tenancy.detached import on_request_thread
from tenancy.roles import Scope

CREATE_FIELDS = {"input_file_id", "endpoint", "completion_window", "metadata"}
MAX_METADATA_PAIRS, MAX_METADATA_VALUE = 16, 512


def _ts(value) -> int | None:
    return int(value.timestamp()) if value else None


def batch_object(batch: Batch) -> dict:
    return {
        "id": batch.id,
        "object": "batch",
        "endpoint": batch.endpoint,
        "model": batch.models_used[0] if len(batch.models_used) == 1 else None,
        "errors": {"object": "list", "data": batch.errors} if batch.errors else None,
        "input_file_id": batch.input_file_id,
        "completion_window": batch.completion_window,
        "status": batch.status,
        "output_file_id": batch.output_file_id,
        "error_file_id": batch.error_file_id,
        "created_at": _ts(batch.created_at),
        "in_progress_at": _ts(batch.in_progress_at),
        "expires_at": _ts(batch.expires_at),
        "finalizing_at": _ts(batch.finalizing_at),
        "completed_at": _ts(batch.completed_at),
        "failed_at": _ts(batch.failed_at),
        "expired_at": _ts(batch.expired_at),
        "cancelling_at": _ts(batch.cancelling_at),
        "cancelled_at": _ts(batch.cancelled_at),
        "request_counts": {"total": batch.total, "completed": batch.completed, "failed": batch.failed},
        "usage": {
            "input_tokens": batch.input_tokens,
            "input_tokens_details": {"cached_tokens": batch.cached_tokens},
            "output_tokens": batch.output_tokens,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": batch.input_tokens + batch.output_tokens,
        },
        "metadata": batch.metadata,
    }


def _json(body: dict, status: int = 200) -> HttpResponse:
    return HttpResponse(orjson.dumps(body), status=status, content_type="application/json")


def _invalid(message: str, param: str, code: str = "invalid_value") -> GatewayError:
    return GatewayError(400, message, param=param, code=code)


def _checked_create(body: dict) -> dict:
    unknown = sorted(set(body) - CREATE_FIELDS)
    if unknown:
        message = f"Unrecognized request argument supplied: {unknown[0]}."
        raise _invalid(message, unknown[0], "unknown_parameter")
    for name in ("input_file_id", "endpoint", "completion_window"):
        if not isinstance(body.get(name), str) or not body[name]:
            raise _invalid(f"Missing required parameter: '{name}'.", name, "missing_required_parameter")
    if body["endpoint"] not in services.ENDPOINTS:
        raise _invalid(
            f"Invalid value for 'endpoint': {body['endpoint']!r}; use one of {', '.join(services.ENDPOINTS)}.",
            "endpoint",
        )
    if body["completion_window"] not in services.COMPLETION_WINDOWS:
        raise _invalid("Invalid value for 'completion_window': the only window is '24h'.", "completion_window")
    metadata = body.get("metadata")
    if metadata is not None:
        if not isinstance(metadata, dict) or len(metadata) > MAX_METADATA_PAIRS:
            raise _invalid(f"'metadata' is an object of at most {MAX_METADATA_PAIRS} pairs.", "metadata")
        for value in metadata.values():
            if not isinstance(value, str) or len(value) > MAX_METADATA_VALUE:
                raise _invalid(f"'metadata' values are strings of at most {MAX_METADATA_VALUE} characters.", "metadata")
    return body


def _not_found(batch_id: str) -> GatewayError:
    return GatewayError(404, f"No batch found with id '{batch_id}'.", param="batch_id", code="not_found")


@gateway_view("GET", "POST")
async def batches(request):
    principal = await authenticate(request, Scope.INFERENCE)
    if request.method == "POST":
        body = _checked_create(request_json(request))
        batch = await services.create(
            principal,
            input_file_id=body["input_file_id"],
            endpoint=body["endpoint"],
            completion_window=body["completion_window"],
            metadata=body.get("metadata"),
            actor=Actor.from_key(principal, request),
        )
        return _json(batch_object(batch))
    try:
        limit = int(request.GET.get("limit", 20))
    except ValueError:
        raise _invalid("'limit' must be an integer.", "limit") from None
    if not 1 <= limit <= 100:
        raise _invalid("'limit' must be between 1 and 100.", "limit")
    after = request.GET.get("after")
    anchor = await on_request_thread(selectors.batch, principal.organization_id, after) if after else None
    if after and anchor is None:
        raise GatewayError(404, f"No batch found with id '{after}' to list after.", param="after", code="not_found")
    page, more = await on_request_thread(selectors.page, principal.organization_id, anchor, limit)
    data = [batch_object(b) for b in page]
    return _json(
        {
            "object": "list",
            "data": data,
            "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None,
            "has_more": more,
        }
    )


@gateway_view("GET")
async def batch(request, batch_id: str):
    principal = await authenticate(request, Scope.INFERENCE)
    found = await on_request_thread(selectors.batch, principal.organization_id, batch_id)
    if found is None:
        raise _not_found(batch_id)
    return _json(batch_object(found))


@gateway_view("POST")
async def cancel(request, batch_id: str):
    principal = await authenticate(request, Scope.INFERENCE)
    found = await services.cancel(principal, batch_id, actor=Actor.from_key(principal, request))
    if found is None:
        raise _not_found(batch_id)
    if found.status not in (Batch.Status.CANCELLING, Batch.Status.CANCELLED):
        raise GatewayError(
            409, f"The batch has ended ({found.status}): there is nothing to cancel.", code="batch_not_cancellable"
        )
    return _json(batch_object(found))
