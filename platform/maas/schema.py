"""The one OpenAPI document: the management API (/api/, generated from the DRF views) and the
OpenAI-compatible API (/v1/, described in maas.openapi_v1), with the error answers every
operation can give, so that a client (or a fuzzer) meets no undocumented status code."""

from maas import openapi_v1

# What any operation may answer besides its success, all with the one error body.
ERRORS = {
    "400": "The request is invalid; `param` names what.",
    "401": "No API key or session, or the key is invalid, revoked or expired.",
    "403": "The key's scopes or the member's role do not allow this, or the organization is suspended.",
    "404": "No such object in this organization (another organization's objects are 404 too).",
    "409": "The object's state does not allow this.",
    "413": "The request body is over the limit.",
    "415": "The body's content type is not one this operation reads.",
    "429": "Too many requests or tokens: see `retry-after`.",
}
INFERENCE_ERRORS = {
    "502": "The model server failed.",
    "503": "No model server can take the request right now (the model may be loading): see `retry-after`.",
}

INFERENCE_PATHS = ("/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/responses")


def management_api_only(endpoints):
    """The DRF views under /api/; /v1/ is described by hand (maas.openapi_v1)."""
    return [endpoint for endpoint in endpoints if endpoint[0].startswith("/api/")]


def add_v1_and_errors(result, generator, request, public):
    result["paths"].update(openapi_v1.paths())
    result.setdefault("components", {}).setdefault("schemas", {}).update(openapi_v1.SCHEMAS)
    error = {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
    for path, operations in result["paths"].items():
        extra = {**ERRORS, **(INFERENCE_ERRORS if path in INFERENCE_PATHS else {})}
        for operation in operations.values():
            if not isinstance(operation, dict) or "responses" not in operation:
                continue
            for status, description in extra.items():
                operation["responses"].setdefault(status, {"description": description, "content": error})
            for parameter in operation.get("parameters", []):
                _no_nul(parameter.get("schema", {}))
    return result


def _no_nul(schema: dict) -> None:
    """maas.body_limits refuses a URL with a NUL: every free string in one says so."""
    if schema.get("type") == "array":
        _no_nul(schema.get("items", {}))
    elif schema.get("type") == "string" and not {"enum", "pattern", "format"} & set(schema):
        schema["pattern"] = "^[^\\u0000]*$"
