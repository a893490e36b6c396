from __future__ import annotations

from asgiref.sync import sync_to_async
from django.http import JsonResponse

from billing import pricing
from billing.pricing import UnitPrice
from catalog import selectors as catalog
from catalog import services as catalog_services
from serving.gateway.http import GatewayError, authenticate, gateway_view
from tenancy.audit import Actor
from tenancy.roles import Scope
from tenancy.services import ServiceError

MODEL_SCOPES = (Scope.MODELS_READ, Scope.INFERENCE)


def model_object(model, owned_by: str, price: UnitPrice) -> dict:
    """A base or fine-tuned model as /v1/models shows it."""
    return {
        "id": model.pk,
        "object": "model",
        "created": int(model.created_at.timestamp()),
        "owned_by": owned_by,
        "pricing": price.public(),  # an extension: what this organization pays
    }


def not_found(model_id: str) -> GatewayError:
    return GatewayError(
        404,
        f"The model '{model_id}' does not exist or you do not have access to it.",
        code="model_not_found",
        param="model",
    )


@gateway_view("GET")
async def list_models(request):
    principal = await authenticate(request, *MODEL_SCOPES)
    org = principal.organization_id
    models = [
        model_object(m, m.owned_by, await pricing.acurrent(org, m.pk)) async for m in catalog.visible_base_models(org)
    ]
    models += [
        model_object(m, principal.organization_slug, await pricing.acurrent(org, m.pk, m.base_model_id))
        async for m in catalog.fine_tuned_models(org)
    ]
    return JsonResponse({"object": "list", "data": models})


@gateway_view("GET", "DELETE")
async def retrieve_model(request, model_id: str):
    if request.method == "DELETE":  # only fine-tuned models can be deleted, by their organization
        principal = await authenticate(request, Scope.FINE_TUNING)
        try:
            await sync_to_async(catalog_services.delete_fine_tuned_model)(
                model_id, organization_id=principal.organization_id, actor=Actor.from_key(principal, request)
            )
        except ServiceError:
            raise not_found(model_id) from None
        return JsonResponse({"id": model_id, "object": "model", "deleted": True})
    principal = await authenticate(request, *MODEL_SCOPES)
    if model_id.startswith("ft:"):
        tuned = await catalog.fine_tuned_models(principal.organization_id).filter(pk=model_id).afirst()
        if tuned is None:
            raise not_found(model_id)
        price = await pricing.acurrent(principal.organization_id, tuned.pk, tuned.base_model_id)
        return JsonResponse(model_object(tuned, principal.organization_slug, price))
    model = await catalog.visible_base_models(principal.organization_id).filter(pk=model_id).afirst()
    if model is None:
        raise not_found(model_id)
    return JsonResponse(
        model_object(model, model.owned_by, await pricing.acurrent(principal.organization_id, model.pk))
    )


@gateway_view()
async def unknown_route(request, rest: str = ""):
    raise GatewayError(404, f"Unknown request URL: {request.method} {request.path}.", code="unknown_url")
