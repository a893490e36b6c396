"""POST /v1/responses, stateless: a request in the Responses shape becomes a chat request (so limits,
budgets and metering are the chat path's), and chat answers become Responses objects and events.

Supported: `input` as a string or a list of messages (roles user, system, developer, assistant;
content a string or `input_text` / `output_text` parts), `instructions`, `max_output_tokens`,
`temperature`, `top_p`, `stream`, and what does not change the answer (`metadata`, `user`,
`store`, ...). Nothing is stored, whatever `store` says: `previous_response_id` and
`conversation` are refused, as are what the chat path does not do yet (tools, `text.format`
other than text, `top_logprobs`).
"""

from __future__ import annotations

import secrets
import time
from typing import Annotated, Any, Literal

from pydantic import Field, ValidationError, WithJsonSchema, field_validator

from serving.protocol.errors import ProtocolError, from_validation
from serving.protocol.generation import MAX_MESSAGES, TEXT_FORMAT, Strict, Tokens, bounded, off, text_or_parts

NONE_YET = {"type": "array", "maxItems": 0, "description": "Not supported yet."}
NOT_STORED = {"enum": [None], "nullable": True, "description": "Nothing is stored here."}


class ContentPart(Strict):
    type: Literal["input_text", "output_text"]
    text: str
    annotations: list | None = None  # an earlier answer's output_text, sent back as input,
    logprobs: list | None = None  # with what came with it


class InputMessage(Strict):
    type: Literal["message"] | None = None
    role: Literal["user", "system", "developer", "assistant"]
    content: str | list[ContentPart]
    id: str | None = None
    status: str | None = None

    @field_validator("content", mode="before")
    @classmethod
    def _text_or_parts(cls, value):
        return text_or_parts(value, ("input_text", "output_text"))

    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(part.text for part in self.content)


class ResponsesRequest(Strict):
    model: str = Field(min_length=1, max_length=256)
    input: str | list[InputMessage] = Field(
        json_schema_extra=bounded(min_items=1, max_items=MAX_MESSAGES, min_length=1)
    )
    instructions: str | None = None
    max_output_tokens: Tokens | None = None
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, ge=0, le=1)
    stream: bool | None = None
    # Accepted because they do not change the answer; nothing is stored either way.
    store: bool | None = None
    metadata: dict[str, str] | None = None
    user: str | None = Field(None, max_length=256)
    parallel_tool_calls: bool | None = None
    truncation: Literal["disabled", "auto"] | None = None
    include: list[str] | None = None
    prompt_cache_key: str | None = None
    prompt_cache_retention: str | None = None
    safety_identifier: str | None = None
    service_tier: str | None = None
    # Refused unless off, with a message naming what is missing.
    tools: Annotated[Any, WithJsonSchema(NONE_YET)] = None
    tool_choice: Annotated[Any, WithJsonSchema({"enum": ["none", "auto"], "nullable": True})] = None
    text: Annotated[Any, WithJsonSchema({"type": "object", "properties": {"format": TEXT_FORMAT}})] = None
    reasoning: Any = None
    top_logprobs: Annotated[Any, WithJsonSchema(off(0))] = None
    previous_response_id: Annotated[Any, WithJsonSchema(NOT_STORED)] = None
    conversation: Annotated[Any, WithJsonSchema(NOT_STORED)] = None
    background: Annotated[Any, WithJsonSchema(off(False))] = None
    max_tool_calls: Annotated[Any, WithJsonSchema(NOT_STORED)] = None
    prompt: Annotated[Any, WithJsonSchema(NOT_STORED)] = None

    @field_validator("input", mode="before")
    @classmethod
    def _messages(cls, value):
        if isinstance(value, str):
            if not value:
                raise ValueError("must not be empty")
            return value
        if not isinstance(value, list) or not value or len(value) > MAX_MESSAGES:
            raise ValueError(f"must be a string or a list of 1 to {MAX_MESSAGES} messages")
        for item in value:
            if isinstance(item, dict) and item.get("type") not in (None, "message"):
                raise ValueError(f"items of type {item.get('type')!r} are not supported (messages only)")
        return value

    def messages(self) -> list[dict]:
        turns = [{"role": "system", "content": self.instructions}] if self.instructions else []
        if isinstance(self.input, str):
            return [*turns, {"role": "user", "content": self.input}]
        return turns + [{"role": m.role, "content": m.text()} for m in self.input]

    def to_chat(self) -> dict:
        """The chat request this is served as."""
        body = {"model": self.model, "messages": self.messages(), "stream": bool(self.stream)}
        for source, target in (("max_output_tokens", "max_tokens"), ("temperature", "temperature"), ("top_p", "top_p")):
            if getattr(self, source) is not None:
                body[target] = getattr(self, source)
        return body


REFUSED = {  # parameter -> (values that mean "off", why)
    "tools": ((None, []), "Tools are not supported on /v1/responses yet."),
    "tool_choice": ((None, "none", "auto"), "Tools are not supported on /v1/responses yet."),
    "text": ((None, {"format": {"type": "text"}}), "Only text.format {'type': 'text'} is supported."),
    "reasoning": ((None, {}, {"effort": None}, {"effort": None, "summary": None}), "reasoning is not supported."),
    "top_logprobs": ((None, 0), "top_logprobs are not supported."),
    "previous_response_id": ((None,), "Responses are not stored here: send the whole conversation as input."),
    "conversation": ((None,), "Conversations are not stored here: send the whole conversation as input."),
    "background": ((None, False), "Background responses are not supported."),
    "max_tool_calls": ((None,), "Tools are not supported on /v1/responses yet."),
    "prompt": ((None,), "Stored prompt templates are not supported."),
}


def parse(body: dict) -> ResponsesRequest:
    try:
        request = ResponsesRequest.model_validate(body)
    except ValidationError as error:
        raise from_validation(error) from None
    for key, (values, message) in REFUSED.items():
        value = getattr(request, key)
        if not any(value == o and isinstance(value, bool) == isinstance(o, bool) for o in values):
            raise ProtocolError(message, key, "unsupported_parameter")
    return request


def new_ids() -> tuple[str, str]:
    return f"resp_{secrets.token_hex(12)}", f"msg_{secrets.token_hex(12)}"


def response_object(
    request: ResponsesRequest,
    response_id: str,
    *,
    created: int | None = None,
    status: str = "completed",
    output: list | None = None,
    usage: dict | None = None,
    finish_reason: str | None = None,
    error: dict | None = None,
) -> dict:
    """A Response as the SDK reads it; `status` in_progress, completed, incomplete or failed."""
    incomplete = finish_reason == "length"
    if status == "completed" and incomplete:
        status = "incomplete"
    return {
        "id": response_id,
        "object": "response",
        "created_at": created or int(time.time()),
        "status": status,
        "error": error,
        "incomplete_details": {"reason": "max_output_tokens"} if status == "incomplete" else None,
        "instructions": request.instructions,
        "max_output_tokens": request.max_output_tokens,
        "model": request.model,
        "output": output or [],
        "parallel_tool_calls": request.parallel_tool_calls if request.parallel_tool_calls is not None else True,
        "previous_response_id": None,
        "reasoning": {"effort": None, "summary": None},
        "store": False,
        "temperature": request.temperature,
        "text": {"format": {"type": "text"}},
        "tool_choice": "auto",
        "tools": [],
        "top_p": request.top_p,
        "truncation": request.truncation or "disabled",
        "usage": usage,
        "user": request.user,
        "metadata": request.metadata or {},
    }


def message_item(message_id: str, text: str, status: str = "completed") -> dict:
    content = [{"type": "output_text", "text": text, "annotations": []}] if status != "in_progress" else []
    return {"id": message_id, "type": "message", "status": status, "role": "assistant", "content": content}


def usage_of(chat_usage: dict) -> dict:
    prompt, completion = int(chat_usage.get("prompt_tokens") or 0), int(chat_usage.get("completion_tokens") or 0)
    return {
        "input_tokens": prompt,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": completion,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": prompt + completion,
    }
