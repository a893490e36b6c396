"""The OpenAPI description of the OpenAI-compatible API under /v1/, merged into the management
API's document (maas.schema). Request bodies are generated from the wire protocol the gateway
parses with (maas.openapi_protocol); responses, in OpenAI's shapes that the official SDK relies
on, are written here."""

from __future__ import annotations

from billing.api import usage
from maas import openapi_protocol


def _ref(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict, description: str = "OK") -> dict:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


NUMBER = {"type": "number"}
NULLABLE_STRING = {"type": "string", "nullable": True}
NULLABLE_INT = {"type": "integer", "nullable": True}
USAGE = {
    "type": "object",
    "required": ["prompt_tokens", "completion_tokens", "total_tokens"],
    "properties": {k: {"type": "integer"} for k in ("prompt_tokens", "completion_tokens", "total_tokens")},
}
SSE_EVENT = {
    "type": "object",
    "required": ["data"],
    "properties": {"data": {"type": "string", "description": "A JSON chunk, or `[DONE]` at the end."}},
}
CHOICE_FINISH = {"type": "string", "nullable": True, "enum": ["stop", "length", None]}

SCHEMAS = {
    "Error": {
        "type": "object",
        "required": ["error"],
        "properties": {
            "error": {
                "type": "object",
                "required": ["message", "type", "param", "code"],
                "properties": {
                    "message": {"type": "string"},
                    "type": {"type": "string"},
                    "param": NULLABLE_STRING,
                    "code": NULLABLE_STRING,
                },
            }
        },
    },
    "Model": {
        "type": "object",
        "required": ["id", "object", "created", "owned_by"],
        "properties": {
            "id": {"type": "string"},
            "object": {"type": "string", "enum": ["model"]},
            "created": {"type": "integer"},
            "owned_by": {"type": "string"},
            "pricing": {
                "type": "object",
                "description": "Extension: what the calling organization pays, per million tokens and per "
                "replica-minute of a dedicated endpoint, as exact decimals; batch_*: a Batch API request's tokens; "
                "input_cached: a prompt token the model server had cached.",
                "required": [
                    "currency",
                    "input_per_million",
                    "output_per_million",
                    "training_per_million",
                    "dedicated_replica_minute",
                    "batch_input_per_million",
                    "batch_output_per_million",
                    "input_cached_per_million",
                ],
                "properties": {
                    "currency": {"type": "string", "example": "usd"},
                    "input_per_million": {"type": "string", "example": "0.1"},
                    "output_per_million": {"type": "string", "example": "0.2"},
                    "training_per_million": {"type": "string", "example": "1"},
                    "dedicated_replica_minute": {"type": "string", "example": "0.002"},
                    "batch_input_per_million": {"type": "string", "example": "0.05"},
                    "batch_output_per_million": {"type": "string", "example": "0.1"},
                    "input_cached_per_million": {"type": "string", "example": "0.05"},
                },
            },
        },
    },
    "ModelList": {
        "type": "object",
        "required": ["object", "data"],
        "properties": {
            "object": {"type": "string", "enum": ["list"]},
            "data": {"type": "array", "items": _ref("Model")},
        },
    },
    "ModelDeleted": {
        "type": "object",
        "required": ["id", "object", "deleted"],
        "properties": {"id": {"type": "string"}, "object": {"type": "string"}, "deleted": {"type": "boolean"}},
    },
    "ChatCompletion": {
        "type": "object",
        "required": ["id", "object", "created", "model", "choices", "usage"],
        "properties": {
            "id": {"type": "string"},
            "object": {"type": "string", "enum": ["chat.completion"]},
            "created": {"type": "integer"},
            "model": {"type": "string"},
            "choices": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["index", "message", "finish_reason"],
                    "properties": {
                        "index": {"type": "integer"},
                        "message": {
                            "type": "object",
                            "required": ["role", "content"],
                            "properties": {"role": {"type": "string"}, "content": NULLABLE_STRING},
                        },
                        "finish_reason": CHOICE_FINISH,
                    },
                },
            },
            "usage": USAGE,
        },
    },
    "Completion": {
        "type": "object",
        "required": ["id", "object", "created", "model", "choices", "usage"],
        "properties": {
            "id": {"type": "string"},
            "object": {"type": "string", "enum": ["text_completion"]},
            "created": {"type": "integer"},
            "model": {"type": "string"},
            "choices": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["index", "text", "finish_reason"],
                    "properties": {
                        "index": {"type": "integer"},
                        "text": {"type": "string"},
                        "finish_reason": CHOICE_FINISH,
                    },
                },
            },
            "usage": USAGE,
        },
    },
    "File": {
        "type": "object",
        "required": ["id", "object", "bytes", "created_at", "filename", "purpose", "status"],
        "properties": {
            "id": {"type": "string"},
            "object": {"type": "string", "enum": ["file"]},
            "bytes": {"type": "integer"},
            "created_at": {"type": "integer"},
            "filename": {"type": "string"},
            "purpose": {"type": "string"},
            "status": {"type": "string"},
            "status_details": NULLABLE_STRING,
            "expires_at": NULLABLE_INT,
        },
    },
    "BatchCreate": {
        "type": "object",
        "required": ["input_file_id", "endpoint", "completion_window"],
        "additionalProperties": False,
        "properties": {
            "input_file_id": {"type": "string", "minLength": 1},
            "endpoint": {"type": "string", "enum": ["/v1/chat/completions", "/v1/completions", "/v1/embeddings"]},
            "completion_window": {"type": "string", "enum": ["24h"]},
            "metadata": {
                "type": "object",
                "nullable": True,
                "maxProperties": 16,
                "additionalProperties": {"type": "string", "maxLength": 512},
                "description": "Up to 16 pairs of strings, kept with the batch.",
            },
        },
    },
    "Batch": {
        "type": "object",
        "required": ["id", "object", "endpoint", "input_file_id", "completion_window", "status", "created_at"],
        "properties": {
            "id": {"type": "string"},
            "object": {"type": "string", "enum": ["batch"]},
            "endpoint": {"type": "string"},
            "model": NULLABLE_STRING,
            "errors": {"type": "object", "nullable": True},
            "input_file_id": {"type": "string"},
            "completion_window": {"type": "string"},
            "status": {
                "type": "string",
                "enum": [
                    "validating",
                    "failed",
                    "in_progress",
                    "finalizing",
                    "completed",
                    "expired",
                    "cancelling",
                    "cancelled",
                ],
            },
            "output_file_id": NULLABLE_STRING,
            "error_file_id": NULLABLE_STRING,
            **{
                name: NULLABLE_INT
                for name in (
                    "created_at",
                    "in_progress_at",
                    "expires_at",
                    "finalizing_at",
                    "completed_at",
                    "failed_at",
                    "expired_at",
                    "cancelling_at",
                    "cancelled_at",
                )
            },
            "request_counts": {
                "type": "object",
                "properties": {k: {"type": "integer"} for k in ("total", "completed", "failed")},
            },
            "usage": {"type": "object"},
            "metadata": {"type": "object", "nullable": True},
        },
    },
    "FineTuningJob": {
        "type": "object",
        "required": ["id", "object", "created_at", "model", "status", "training_file", "hyperparameters"],
        "properties": {
            "id": {"type": "string"},
            "object": {"type": "string", "enum": ["fine_tuning.job"]},
            "created_at": {"type": "integer"},
            "model": {"type": "string"},
            "status": {"type": "string"},
            "training_file": {"type": "string"},
            "validation_file": NULLABLE_STRING,
            "hyperparameters": {"type": "object"},
            "fine_tuned_model": NULLABLE_STRING,
            "finished_at": NULLABLE_INT,
            "trained_tokens": NULLABLE_INT,
            "error": {"type": "object", "nullable": True},
            "seed": NULLABLE_INT,
            "suffix": NULLABLE_STRING,
        },
    },
    "FineTuningJobCreate": {
        "type": "object",
        "required": ["model", "training_file"],
        "properties": {
            "model": {"type": "string", "minLength": 1, "example": "smollm2-135m-instruct"},
            "training_file": {"type": "string", "minLength": 1},
            "validation_file": NULLABLE_STRING,
            "suffix": {"type": "string", "nullable": True, "maxLength": 64},
            "seed": NULLABLE_INT,
            "hyperparameters": {"type": "object", "nullable": True},
            "method": {"type": "object", "nullable": True},
            "metadata": {"type": "object", "nullable": True},
        },
    },
    "JobEvent": {
        "type": "object",
        "required": ["id", "object", "created_at", "level", "message"],
        "properties": {
            "id": {"type": "string"},
            "object": {"type": "string"},
            "created_at": {"type": "integer"},
            "level": {"type": "string"},
            "message": {"type": "string"},
            "type": {"type": "string"},
            "data": {"type": "object", "nullable": True},
        },
    },
    "JobCheckpoint": {
        "type": "object",
        "required": ["id", "object", "created_at", "fine_tuning_job_id", "step_number", "metrics"],
        "properties": {
            "id": {"type": "string"},
            "object": {"type": "string"},
            "created_at": {"type": "integer"},
            "fine_tuned_model_checkpoint": {"type": "string"},
            "fine_tuning_job_id": {"type": "string"},
            "step_number": {"type": "integer"},
            "metrics": {"type": "object"},
        },
    },
    "EmbeddingList": {
        "type": "object",
        "required": ["object", "data", "model", "usage"],
        "properties": {
            "object": {"type": "string", "enum": ["list"]},
            "data": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["object", "index", "embedding"],
                    "properties": {
                        "object": {"type": "string", "enum": ["embedding"]},
                        "index": {"type": "integer"},
                        "embedding": {
                            "description": "Floats, or with `encoding_format: base64` little-endian float32 in base64.",
                            "oneOf": [{"type": "array", "items": NUMBER}, {"type": "string"}],
                        },
                    },
                },
            },
            "model": {"type": "string"},
            "usage": {
                "type": "object",
                "required": ["prompt_tokens", "total_tokens"],
                "properties": {"prompt_tokens": {"type": "integer"}, "total_tokens": {"type": "integer"}},
            },
        },
    },
    "Response": {
        "type": "object",
        "description": "A Responses API answer (stateless: never stored).",
        "required": ["id", "object", "created_at", "status", "model", "output"],
        "properties": {
            "id": {"type": "string"},
            "object": {"type": "string", "enum": ["response"]},
            "created_at": {"type": "integer"},
            "status": {"type": "string", "enum": ["completed", "incomplete", "failed", "in_progress"]},
            "model": {"type": "string"},
            "output": {"type": "array", "items": {"type": "object"}},
            "usage": {"type": "object", "nullable": True},
            "incomplete_details": {"type": "object", "nullable": True},
        },
    },
    **openapi_protocol.schemas(),
}


def _query(name: str, schema: dict, required: bool = False, many: bool = False) -> dict:
    param = {"name": name, "in": "query", "required": required, "schema": schema}
    if many:
        param.update(schema={"type": "array", "items": schema}, style="form", explode=True)
    return param


USAGE_PARAMS = [
    _query("start_time", usage.TIME, required=True),
    _query("end_time", usage.TIME),
    _query("bucket_width", {"type": "string", "enum": ["1m", "1h", "1d"]}),
    _query(
        "group_by", {"type": "string", "enum": ["model", "api_key_id", "endpoint_id", "batch", "project_id"]}, many=True
    ),
    _query("models", {"type": "string"}, many=True),
    _query("api_key_ids", usage.KEY_IDS, many=True),
    _query("limit", usage.LIMIT),
    _query("page", usage.PAGE),
]
COST_PARAMS = [
    *[p for p in USAGE_PARAMS if p["name"] != "group_by"],
    _query(
        "group_by",
        {"type": "string", "enum": ["model", "api_key_id", "endpoint_id", "batch", "project_id", "line_item"]},
        many=True,
    ),
]
BUCKET_PAGE = {
    "type": "object",
    "required": ["object", "data", "has_more", "next_page"],
    "properties": {
        "object": {"type": "string", "enum": ["page"]},
        "has_more": {"type": "boolean"},
        "next_page": NULLABLE_STRING,
        "data": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["object", "start_time", "end_time", "results"],
                "properties": {
                    "object": {"type": "string", "enum": ["bucket"]},
                    "start_time": {"type": "integer"},
                    "end_time": {"type": "integer"},
                    "results": {"type": "array", "items": {"type": "object"}},
                },
            },
        },
    },
}


def _page(item: str) -> dict:
    return {
        "type": "object",
        "required": ["object", "data", "has_more"],
        "properties": {
            "object": {"type": "string", "enum": ["list"]},
            "data": {"type": "array", "items": _ref(item)},
            "has_more": {"type": "boolean"},
        },
    }


def _path_param(name: str) -> dict:
    return {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}


PAGE_PARAMS = [
    {"name": "after", "in": "query", "required": False, "schema": {"type": "string"}},
    {"name": "limit", "in": "query", "required": False, "schema": {"type": "integer", "minimum": 1, "maximum": 100}},
]


def _op(summary: str, responses: dict, *, tag: str, body: dict | None = None, params: list | None = None) -> dict:
    operation = {
        "summary": summary,
        "tags": [tag],
        "security": [{"apiKey": []}],
        "responses": responses,
        "operationId": "v1_" + summary.lower().replace(" ", "_").replace("'", "").replace(",", ""),
    }
    if body is not None:
        operation["requestBody"] = body
    if params:
        operation["parameters"] = params
    return operation


def _json_body(name: str) -> dict:
    return {"required": True, "content": {"application/json": {"schema": _ref(name)}}}


def _generation(summary: str, request: str, answer: str) -> dict:
    ok = {
        "description": "The answer; with `stream: true`, server-sent events of chunks ending in `data: [DONE]`.",
        "content": {"application/json": {"schema": _ref(answer)}, "text/event-stream": {"schema": SSE_EVENT}},
    }
    return {"post": _op(summary, {"200": ok}, tag="inference", body=_json_body(request))}


def paths() -> dict:
    job = [_path_param("job_id")]
    file = [_path_param("file_id")]
    batch = [_path_param("batch_id")]
    return {
        "/v1/models": {"get": _op("List models", {"200": _json(_ref("ModelList"))}, tag="models")},
        "/v1/models/{model_id}": {
            "get": _op(
                "Retrieve a model", {"200": _json(_ref("Model"))}, tag="models", params=[_path_param("model_id")]
            ),
            "delete": _op(
                "Delete a fine-tuned model",
                {"200": _json(_ref("ModelDeleted"))},
                tag="models",
                params=[_path_param("model_id")],
            ),
        },
        "/v1/chat/completions": _generation("Create a chat completion", "ChatCompletionRequest", "ChatCompletion"),
        "/v1/completions": _generation("Create a completion", "CompletionRequest", "Completion"),
        "/v1/embeddings": {
            "post": _op(
                "Create embeddings",
                {"200": _json(_ref("EmbeddingList"))},
                tag="inference",
                body=_json_body("EmbeddingsRequest"),
            )
        },
        "/v1/responses": _generation("Create a response", "ResponsesRequest", "Response"),
        "/v1/files": {
            "get": _op(
                "List files",
                {"200": _json(_page("File"))},
                tag="files",
                params=[*PAGE_PARAMS, {"name": "purpose", "in": "query", "schema": {"type": "string"}}],
            ),
            "post": _op(
                "Upload a file",
                {"200": _json(_ref("File"))},
                tag="files",
                body={
                    "required": True,
                    "content": {
                        "multipart/form-data": {
                            "schema": {
                                "type": "object",
                                "required": ["file", "purpose"],
                                "properties": {
                                    "file": {"type": "string", "format": "binary"},
                                    "purpose": {"type": "string", "enum": ["fine-tune", "batch"]},
                                },
                            }
                        }
                    },
                },
            ),
        },
        "/v1/files/{file_id}": {
            "get": _op("Retrieve a file", {"200": _json(_ref("File"))}, tag="files", params=file),
            "delete": _op("Delete a file", {"200": _json(_ref("ModelDeleted"))}, tag="files", params=file),
        },
        "/v1/files/{file_id}/content": {
            "get": _op(
                "Retrieve a file's content",
                {"200": {"description": "The file", "content": {"application/octet-stream": {"schema": {}}}}},
                tag="files",
                params=file,
            )
        },
        "/v1/batches": {
            "get": _op("List batches", {"200": _json(_page("Batch"))}, tag="batches", params=PAGE_PARAMS),
            "post": _op("Create a batch", {"200": _json(_ref("Batch"))}, tag="batches", body=_json_body("BatchCreate")),
        },
        "/v1/batches/{batch_id}": {
            "get": _op("Retrieve a batch", {"200": _json(_ref("Batch"))}, tag="batches", params=batch)
        },
        "/v1/batches/{batch_id}/cancel": {
            "post": _op("Cancel a batch", {"200": _json(_ref("Batch"))}, tag="batches", params=batch)
        },
        "/v1/fine_tuning/jobs": {
            "get": _op(
                "List fine-tuning jobs", {"200": _json(_page("FineTuningJob"))}, tag="fine-tuning", params=PAGE_PARAMS
            ),
            "post": _op(
                "Create a fine-tuning job",
                {"200": _json(_ref("FineTuningJob"))},
                tag="fine-tuning",
                body=_json_body("FineTuningJobCreate"),
            ),
        },
        "/v1/fine_tuning/jobs/{job_id}": {
            "get": _op(
                "Retrieve a fine-tuning job", {"200": _json(_ref("FineTuningJob"))}, tag="fine-tuning", params=job
            )
        },
        **{
            f"/v1/fine_tuning/jobs/{{job_id}}/{action}": {
                "post": _op(
                    f"{action.capitalize()} a fine-tuning job",
                    {"200": _json(_ref("FineTuningJob"))},
                    tag="fine-tuning",
                    params=job,
                )
            }
            for action in ("cancel", "pause", "resume")
        },
        "/v1/fine_tuning/jobs/{job_id}/events": {
            "get": _op(
                "List a job's events", {"200": _json(_page("JobEvent"))}, tag="fine-tuning", params=[*job, *PAGE_PARAMS]
            )
        },
        "/v1/fine_tuning/jobs/{job_id}/checkpoints": {
            "get": _op(
                "List a job's checkpoints",
                {"200": _json(_page("JobCheckpoint"))},
                tag="fine-tuning",
                params=[*job, *PAGE_PARAMS],
            )
        },
        "/v1/organization/usage/completions": {
            "get": _op(
                "Completions usage",
                {"200": _json(BUCKET_PAGE)},
                tag="usage",
                params=USAGE_PARAMS,
            )
        },
        "/v1/organization/usage/embeddings": {
            "get": _op("Embeddings usage", {"200": _json(BUCKET_PAGE)}, tag="usage", params=USAGE_PARAMS)
        },
        "/v1/organization/costs": {"get": _op("Costs", {"200": _json(BUCKET_PAGE)}, tag="usage", params=COST_PARAMS)},
    }
