"""The /v1 request bodies of the OpenAPI document, generated from the wire protocol's pydantic
models (serving.protocol), so the document says what the gateway parses. pydantic writes JSON
Schema 2020-12; the document is OpenAPI 3.0, so `null` members of a union become `nullable`,
`const` becomes a one-value `enum`, and nested models land in `components.schemas`."""

from __future__ import annotations

from serving.protocol.embeddings import EmbeddingsRequest
from serving.protocol.generation import ChatCompletionRequest, CompletionRequest
from serving.protocol.responses import ResponsesRequest

MODELS = (ChatCompletionRequest, CompletionRequest, EmbeddingsRequest, ResponsesRequest)
REF = "#/components/schemas/{model}"
# The catalog's own models, as the examples a reader (or a fuzzer) starts from.
EXAMPLE_MODEL = {
    "ChatCompletionRequest": "smollm2-135m-instruct",
    "CompletionRequest": "smollm2-135m-instruct",
    "ResponsesRequest": "smollm2-135m-instruct",
    "EmbeddingsRequest": "all-minilm-l6-v2",
}


def _openapi(node):
    if isinstance(node, list):
        return [_openapi(item) for item in node]
    if not isinstance(node, dict):
        return node
    node = {key: _openapi(value) for key, value in node.items() if key != "title"}
    if "const" in node:
        node["enum"] = [node.pop("const")]
    members = node.get("anyOf")
    if members and {"type": "null"} in members:
        rest = [m for m in members if m != {"type": "null"}]
        node.pop("anyOf")
        if len(rest) == 1 and "$ref" not in rest[0]:
            node.update(rest[0])
        elif len(rest) == 1:
            node["allOf"] = rest  # a $ref cannot carry `nullable` beside it in 3.0
        else:
            node["anyOf"] = rest
        node["nullable"] = True
        if "enum" in node and None not in node["enum"]:  # 3.0: a nullable enum lists null itself
            node["enum"] = [*node["enum"], None]
    if node.get("default") is None:
        node.pop("default", None)
    return node


def schemas() -> dict:
    """Every request model and the models nested in them, by name."""
    found = {}
    for model in MODELS:
        schema = model.model_json_schema(ref_template=REF)
        for name, nested in schema.pop("$defs", {}).items():
            found[name] = _openapi(nested)
        found[model.__name__] = _openapi(schema)
        found[model.__name__]["properties"]["model"]["example"] = EXAMPLE_MODEL[model.__name__]
    return found
