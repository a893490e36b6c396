"""POST /v1/responses, stateless: a request in the Responses shape becomes a chat request (so limits,
budgets and metering are the chat path's), and chat answers become Responses objects and events.

Supported: `input` as a string or a list of items (messages of roles user, system, developer,
assistant, with a string or `input_text` / `output_text` parts; an earlier answer's
`function_call` items and the caller's `function_call_output` items), `instructions`, function
`tools` with `tool_choice` and `parallel_tool_calls`, `text.format` (text, json_object,
json_schema), `max_output_tokens`, `temperature`, `top_p`, `stream`, and what does not change the
answer (`metadata`, `user`, `store`, ...). Nothing is stored, whatever `store` says:
`previous_response_id` and `conversation` are refused, as is `top_logprobs`.
"""

from __future__ import annotations

import secrets
import time
from typing import Annotated, Any, Literal

from pydantic import ConfigDict, Discriminator, Field, Tag, ValidationError, WithJsonSchema, field_validator

from serving.protocol import structured
from serving.protocol.errors import ProtocolError, from_validation
from serving.protocol.generation import MAX_MESSAGES, Strict, Tokens, bounded, off, text_or_parts

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


class FunctionCallItem(Strict):
    """A call the model made (an earlier answer's output item, sent back as input)."""

    type: Literal["function_call"]
    call_id: str = Field(min_length=1, max_length=256)
    name: str = Field(max_length=64)
    arguments: str
    id: str | None = None
    status: str | None = None


class FunctionCallOutputItem(Strict):
    type: Literal["function_call_output"]
    call_id: str = Field(min_length=1, max_length=256)
    output: str | list[ContentPart]
    id: str | None = None
    status: str | None = None

    def text(self) -> str:
        return self.output if isinstance(self.output, str) else "".join(part.text for part in self.output)


class FunctionTool(Strict):
    type: Literal["function"]
    name: str = Field(pattern=structured.NAME_PATTERN)
    description: str | None = None
    parameters: Annotated[dict[str, Any] | None, WithJsonSchema(structured.JSON_SCHEMA_OR_NULL)] = None
    strict: bool | None = None


class NamedFunctionChoice(Strict):
    type: Literal["function"]
    name: str


class TextFormat(Strict):
    type: Literal["text", "json_object", "json_schema"]
    name: str | None = Field(None, pattern=structured.NAME_PATTERN)
    description: str | None = None
    schema_: Annotated[dict[str, Any] | None, WithJsonSchema(structured.JSON_SCHEMA_OR_NULL)] = Field(
        None, alias="schema"
    )
    strict: bool | None = None


class TextOptions(Strict):
    format: TextFormat | None = None
    verbosity: Literal["low", "medium", "high"] | None = None


def _item_kind(item) -> str | None:
    kind = item.get("type") or "message" if isinstance(item, dict) else getattr(item, "type", None) or "message"
    return f"<{kind}>"  # a tag errors do not name as a parameter (serving.protocol.errors)


InputItem = Annotated[
    Annotated[InputMessage, Tag("<message>")]
    | Annotated[FunctionCallItem, Tag("<function_call>")]
    | Annotated[FunctionCallOutputItem, Tag("<function_call_output>")],
    Discriminator(_item_kind),
]
ITEM_TYPES = ("message", "function_call", "function_call_output")


class ResponsesRequest(Strict):
    model_config = ConfigDict(json_schema_extra=structured.choice_rules(("tools", "tool_choice")))
    model: str = Field(min_length=1, max_length=256)
    input: str | list[InputItem] = Field(json_schema_extra=bounded(min_items=1, max_items=MAX_MESSAGES, min_length=1))
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
    tools: list[FunctionTool] | None = Field(None, max_length=structured.MAX_TOOLS)
    tool_choice: Literal["none", "auto", "required"] | NamedFunctionChoice | None = None
    text: TextOptions | None = None
    # Refused unless off, with a message naming what is missing.
    reasoning: Any = None
    top_logprobs: Annotated[int | None, WithJsonSchema(off(0))] = None
    previous_response_id: Annotated[Any, WithJsonSchema(NOT_STORED)] = None
    conversation: Annotated[Any, WithJsonSchema(NOT_STORED)] = None
    background: Annotated[Any, WithJsonSchema(off(False))] = None
    max_tool_calls: Annotated[Any, WithJsonSchema(NOT_STORED)] = None
    prompt: Annotated[Any, WithJsonSchema(NOT_STORED)] = None

    @field_validator("tools")
    @classmethod
    def _unique(cls, tools):
        return structured.unique_names(tools)

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
            if isinstance(item, dict) and item.get("type", "message") not in ITEM_TYPES:
                raise ValueError(f"items of type {item.get('type')!r} are not supported (only {', '.join(ITEM_TYPES)})")
        return value

    def messages(self) -> list[dict]:
        """The input as chat messages: calls the model made become an assistant message's tool_calls
        (consecutive calls, one message), their outputs tool messages."""
        turns = [{"role": "system", "content": self.instructions}] if self.instructions else []
        if isinstance(self.input, str):
            return [*turns, {"role": "user", "content": self.input}]
        for item in self.input:
            if isinstance(item, FunctionCallItem):
                call = {
                    "id": item.call_id,
                    "type": "function",
                    "function": {"name": item.name, "arguments": item.arguments},
                }
                if turns and turns[-1]["role"] == "assistant" and "tool_calls" in turns[-1]:
                    turns[-1]["tool_calls"].append(call)
                else:
                    turns.append({"role": "assistant", "content": None, "tool_calls": [call]})
            elif isinstance(item, FunctionCallOutputItem):
                turns.append({"role": "tool", "tool_call_id": item.call_id, "content": item.text()})
            else:
                turns.append({"role": item.role, "content": item.text()})
        return turns

    def response_format(self) -> dict | None:
        chosen = self.text.format if self.text is not None else None
        if chosen is None or chosen.type == "text":
            return None
        if chosen.type == "json_object":
            return {"type": "json_object"}
        if chosen.name is None:
            raise ProtocolError(
                "Missing required parameter: 'text.format.name'.", "text.format.name", "missing_required_parameter"
            )
        schema = {"name": chosen.name}
        schema.update(
            {
                key: value
                for key, value in (
                    ("description", chosen.description),
                    ("schema", chosen.schema_),
                    ("strict", chosen.strict),
                )
                if value is not None
            }
        )
        return {"type": "json_schema", "json_schema": schema}

    def to_chat(self) -> dict:
        """The chat request this is served as."""
        body = {"model": self.model, "messages": self.messages(), "stream": bool(self.stream)}
        for source, target in (("max_output_tokens", "max_tokens"), ("temperature", "temperature"), ("top_p", "top_p")):
            if getattr(self, source) is not None:
                body[target] = getattr(self, source)
        if self.tools:
            body["tools"] = [
                {"type": "function", "function": tool.model_dump(exclude_none=True, exclude={"type"})}
                for tool in self.tools
            ]
        if self.tool_choice is not None and (self.tools or self.tool_choice != "auto"):
            choice = self.tool_choice
            body["tool_choice"] = (
                choice if isinstance(choice, str) else {"type": "function", "function": {"name": choice.name}}
            )
        if self.parallel_tool_calls is not None and self.tools:
            body["parallel_tool_calls"] = self.parallel_tool_calls
        if self.response_format() is not None:
            body["response_format"] = self.response_format()
        return body


REFUSED = {  # parameter -> (values that mean "off", why)
    "reasoning": ((None, {}, {"effort": None}, {"effort": None, "summary": None}), "reasoning is not supported."),
    "top_logprobs": ((None, 0), "top_logprobs are not supported."),
    "previous_response_id": ((None,), "Responses are not stored here: send the whole conversation as input."),
    "conversation": ((None,), "Conversations are not stored here: send the whole conversation as input."),
    "background": ((None, False), "Background responses are not supported."),
    "max_tool_calls": ((None,), "max_tool_calls is not supported: call the model again to go on."),
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
    request.response_format()  # a json_schema format without its name is refused here
    chosen = request.text.format if request.text is not None else None
    if chosen is not None and chosen.schema_ is not None:
        structured.check_schema(chosen.schema_, "text.format.schema")
    choice = request.tool_choice
    if isinstance(choice, NamedFunctionChoice):
        choice = structured.NamedFunction(name=choice.name)
    functions = structured.functions_of(request.tools or [], "tools")
    structured.tools_constraint(functions, choice, request.parallel_tool_calls, "tool_choice")
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
        "parallel_tool_calls": bool(request.parallel_tool_calls),  # one call per answer unless asked
        "previous_response_id": None,
        "reasoning": {"effort": None, "summary": None},
        "store": False,
        "temperature": request.temperature,
        "text": request.text.model_dump(exclude_none=True, by_alias=True)
        if request.text is not None and request.text.format is not None
        else {"format": {"type": "text"}},
        "tool_choice": request.tool_choice.model_dump()
        if isinstance(request.tool_choice, NamedFunctionChoice)
        else request.tool_choice or "auto",
        "tools": [tool.model_dump(exclude_none=True) for tool in request.tools or ()],
        "top_p": request.top_p,
        "truncation": request.truncation or "disabled",
        "usage": usage,
        "user": request.user,
        "metadata": request.metadata or {},
    }


def message_item(message_id: str, text: str, status: str = "completed") -> dict:
    content = [{"type": "output_text", "text": text, "annotations": []}] if status != "in_progress" else []
    return {"id": message_id, "type": "message", "status": status, "role": "assistant", "content": content}


def function_call_item(call_id: str, name: str, arguments: str, status: str = "completed") -> dict:
    return {
        "id": "fc_" + call_id.removeprefix("call_"),
        "type": "function_call",
        "status": status,
        "call_id": call_id,
        "name": name,
        "arguments": arguments,
    }


def output_of(message: dict, message_id: str) -> list[dict]:
    """A chat answer's message as Response output items: its text, then its calls."""
    text, calls = message.get("content") or "", message.get("tool_calls") or ()
    items = [message_item(message_id, text)] if text or not calls else []
    for call in calls:
        items.append(function_call_item(call["id"], call["function"]["name"], call["function"]["arguments"]))
    return items


def usage_of(chat_usage: dict) -> dict:
    prompt, completion = int(chat_usage.get("prompt_tokens") or 0), int(chat_usage.get("completion_tokens") or 0)
    cached = (chat_usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0
    return {
        "input_tokens": prompt,
        "input_tokens_details": {"cached_tokens": int(cached)},
        "output_tokens": completion,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": prompt + completion,
    }
