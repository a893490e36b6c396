from __future__ import annotations

from django.http import JsonResponse

from catalog import selectors as catalog
from catalog.models import BaseModel
from serving.gateway.http import GatewayError, authenticate, gateway_view
from tenancy.roles import Scope

MODEL_SCOPES = (Scope.MODELS_READ, Scope.INFERENCE)


def model_object(model: BaseModel) -> dict:
    return {"id": model.pk, "object": "model", "created": int(model.created_at.timestamp()), "owned_by": model.owned_by}


@gateway_view("GET")
async def list_models(request):
    principal = await authenticate(request, *MODEL_SCOPES)
    models = [model_object(m) async for m in catalog.visible_base_models(principal.organization_id)]
    return JsonResponse({"object": "list", "data": models})


@gateway_view("GET")
async def retrieve_model(request, model_id: str):
    principal = await authenticate(request, *MODEL_SCOPES)
    model = await catalog.visible_base_models(principal.organization_id).filter(pk=model_id).afirst()
    if model is None:
        raise GatewayError(
            404,
            f"The model '{model_id}' does not exist or you do not have access to it.",
            code="model_not_found",
            param="model",
        )
    return JsonResponse(model_object(model))


@gateway_view()
async def unknown_route(request, rest: str = ""):
    raise GatewayError(404, f"Unknown request URL: {request.method} {request.path}.", code="unknown_url")
