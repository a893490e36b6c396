"""POST /v1/chat/completions and /v1/completions, as OpenAI's clients send them.

Parsed strictly (a number is not a string, `true` is not 1) with every unknown parameter refused
by name, so an engine's own extras (`chat_template`, `guided_json`, prompt arrays, ...) can never
be reached through the platform. Parameters the platform does not act on yet are refused with a
400 naming them (`unsupported`) rather than half-served; those that do not change the answer
(`user`, `metadata`, `store`, ...) are accepted and not forwarded.
"""

from __future__ import annotations

import dataclasses
from typing import Annotated, Any, Literal

from pydantic import ConfigDict, Field, PrivateAttr, ValidationError, WithJsonSchema, field_validator, model_validator

from serving.protocol import structured
from serving.protocol.base import Strict
from serving.protocol.errors import ProtocolError, from_validation, missing
from serving.protocol.structured import Constraint, FunctionDefinition, ResponseFormat, Tool

MAX_MESSAGES = 2048
MAX_STOP_CHARS = 500
MAX_LOGIT_BIAS = 300
MAX_CHOICES = 8
MAX_TOP_LOGPROBS = 20
INT64 = (-(2**63), 2**63 - 1)
Int64 = Annotated[int, Field(ge=INT64[0], le=INT64[1])]
Tokens = Annotated[int, Field(ge=1, le=2**31)]


TEXT_FORMAT = {
    "type": "object",
    "required": ["type"],
    "properties": {"type": {"type": "string", "enum": ["text"]}},
    "additionalProperties": False,
    "description": "Only text for now.",
}


def bounded(*, min_items: int = 0, max_items: int = 0, min_length: int = 0):
    """What a before-validator checks of a union's members, said in the schema pydantic writes
    (a callable, so the members' own schemas and references stay pydantic's)."""

    def extra(schema: dict) -> None:
        for member in schema.get("anyOf", [schema]):
            if member.get("type") == "array":
                member.update({"minItems": min_items} if min_items else {})
                member.update({"maxItems": max_items} if max_items else {})
            elif member.get("type") == "string" and min_length:
                member["minLength"] = min_length

    return extra


def off(value) -> dict:
    """The document's word for a parameter the platform does not act on yet: only its "off" value."""
    return {"enum": [value, None], "description": "Only this value (or null) for now."}


class StreamOptions(Strict):
    include_usage: bool | None = None
    include_obfuscation: bool | None = None  # OpenAI's; nothing to obfuscate here
    continuous_usage_stats: bool | None = None  # vLLM's: usage in every chunk (the gateway asks engines for it)


def text_or_parts(value, kinds: tuple[str, ...]):
    """A message's content: a string, or a non-empty list of text parts of these types. One
    complaint naming the content, rather than one per member of the union."""
    if isinstance(value, str):
        return value
    if not isinstance(value, list) or not value:
        raise ValueError(f"must be a string or a non-empty list of {' or '.join(kinds)} parts")
    for part in value:
        if not isinstance(part, dict) or part.get("type") not in kinds or not isinstance(part.get("text"), str):
            raise ValueError(f"only {' and '.join(kinds)} parts are supported")
    return value


class TextPart(Strict):
    type: Literal["text"]
    text: str


class FunctionCall(Strict):
    name: str = Field(max_length=64)
    arguments: str


class ToolCall(Strict):
    id: str = Field(min_length=1, max_length=256)
    type: Literal["function"]
    function: FunctionCall


def _role_rules(schema: dict) -> None:
    """What `_role_fields` checks, said in the schema: content (not null) is required but for an
    assistant message with calls, a tool message names its call, only assistants carry calls."""
    part = {
        "type": "object",
        "properties": {"type": {"enum": ["text"]}, "text": {"type": "string"}},
        "required": ["type", "text"],
        "additionalProperties": False,
    }
    content = {"anyOf": [{"type": "string"}, {"type": "array", "minItems": 1, "items": part}]}
    no_calls = {"not": {"anyOf": [{"required": ["tool_calls"]}, {"required": ["function_call"]}]}}

    def role(names: list[str], required: list[str]) -> dict:
        return {"properties": {"role": {"enum": names}, "content": content}, "required": required, **no_calls}

    schema["anyOf"] = [
        role(["system", "developer", "user"], ["content"]),
        role(["tool"], ["content", "tool_call_id"]),
        role(["function"], ["content", "name"]),
        {
            "properties": {"role": {"enum": ["assistant"]}},
            "anyOf": [
                {"properties": {"content": content}, "required": ["content"]},
                {"required": ["tool_calls"]},
                {"required": ["function_call"]},
            ],
        },
    ]


class Message(Strict):
    """One message of a conversation. Assistant messages may carry `tool_calls` instead of content;
    a `tool` message answers one by its `tool_call_id`; `function` is the legacy form of `tool`."""

    model_config = ConfigDict(json_schema_extra=_role_rules)

    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[TextPart] | None = Field(None, json_schema_extra=bounded(min_items=1))
    name: str | None = Field(None, max_length=64)
    refusal: str | None = None
    tool_calls: list[ToolCall] | None = Field(None, max_length=structured.MAX_TOOLS)
    tool_call_id: str | None = Field(None, max_length=256)
    function_call: FunctionCall | None = None  # the legacy form of tool_calls

    @field_validator("content", mode="before")
    @classmethod
    def _text_or_parts(cls, value):
        return value if value is None else text_or_parts(value, ("text",))

    @model_validator(mode="after")
    def _role_fields(self):
        calls = self.tool_calls is not None or self.function_call is not None
        if calls and self.role != "assistant":
            raise ValueError("only assistant messages carry tool calls")
        if self.content is None and not (calls and self.role == "assistant"):
            raise missing("content")
        if self.role == "tool" and not self.tool_call_id:
            raise ValueError("a tool message needs the tool_call_id it answers")
        if self.role == "function" and not self.name:
            raise ValueError("a function message needs the name of the function")
        return self

    def text(self) -> str:
        if self.content is None:
            return ""
        return self.content if isinstance(self.content, str) else "".join(part.text for part in self.content)


def _stops(value):
    stops = [value] if isinstance(value, str) else value
    if not isinstance(stops, list) or len(stops) > 4 or not all(isinstance(s, str) for s in stops):
        raise ValueError("must be a string or a list of at most 4 strings")
    if any(len(s) > MAX_STOP_CHARS for s in stops):
        raise ValueError(f"each stop string may have at most {MAX_STOP_CHARS} characters")
    return value


# The optional features a catalog model may lack (catalog.models.BaseModel.features names them).
FEATURES = ("tools", "response_format", "logprobs")


class Generation(Strict):
    """What chat and text completions share."""

    model: str = Field(min_length=1, max_length=256)
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    max_tokens: Tokens | None = None
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, ge=0, le=1)
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    seed: Int64 | None = None
    stop: Annotated[
        str | list[str] | None,
        WithJsonSchema(
            {
                "anyOf": [
                    {"type": "string", "maxLength": MAX_STOP_CHARS},
                    {"type": "array", "maxItems": 4, "items": {"type": "string", "maxLength": MAX_STOP_CHARS}},
                    {"type": "null"},
                ]
            }
        ),
    ] = None
    logit_bias: Annotated[
        dict[str, float] | None,
        WithJsonSchema(
            {
                "anyOf": [
                    {
                        "type": "object",
                        "maxProperties": MAX_LOGIT_BIAS,
                        "additionalProperties": {"type": "number", "minimum": -100, "maximum": 100},
                        "description": "Token ids (decimal strings) to biases.",
                    },
                    {"type": "null"},
                ]
            }
        ),
    ] = None
    n: int | None = Field(None, ge=1, le=MAX_CHOICES)
    # Accepted because they do not change the answer, and not forwarded.
    user: str | None = Field(None, max_length=256)
    metadata: Annotated[
        dict[str, str] | None,
        WithJsonSchema(
            {
                "anyOf": [
                    {
                        "type": "object",
                        "maxProperties": 16,
                        "additionalProperties": {"type": "string", "maxLength": 512},
                    },
                    {"type": "null"},
                ]
            }
        ),
    ] = None
    store: bool | None = None
    service_tier: str | None = None
    prompt_cache_key: str | None = None
    safety_identifier: str | None = None

    @field_validator("stop", mode="before")
    @classmethod
    def _stop(cls, value):
        return value if value is None else _stops(value)

    @field_validator("logit_bias")
    @classmethod
    def _bias(cls, bias):
        if bias is None:
            return None
        if len(bias) > MAX_LOGIT_BIAS:
            raise ValueError(f"may map at most {MAX_LOGIT_BIAS} token ids")
        for key, value in bias.items():
            if not key.isdigit() or abs(value) > 100:
                raise ValueError(f"entry {key!r}: a token id mapped to a bias in [-100, 100]")
        return bias

    @field_validator("metadata")
    @classmethod
    def _metadata(cls, metadata):
        if metadata is not None and (
            len(metadata) > 16 or any(len(k) > 64 or len(v) > 512 for k, v in metadata.items())
        ):
            raise ValueError("may map at most 16 keys of 64 characters to values of 512")
        return metadata

    def stops(self) -> list[str]:
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        return [s for s in stops if s]

    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)

    def continuous_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.continuous_usage_stats)

    def sampling(self) -> dict:
        """The sampling parameters an engine is sent (only those set)."""
        values = {
            key: getattr(self, key)
            for key in ("temperature", "top_p", "presence_penalty", "frequency_penalty", "seed", "logit_bias")
            if getattr(self, key) is not None
        }
        if self.stops():
            values["stop"] = self.stops()
        return {key: value for key, value in values.items() if value != {}}


class ChatCompletionRequest(Generation):
    model_config = ConfigDict(
        json_schema_extra=structured.choice_rules(
            ("tools", "tool_choice"),
            ("functions", "function_call"),
            exclusive=(("tools", "tool_choice"), ("functions", "function_call")),
        )
    )
    _constraint: Constraint | None = PrivateAttr(default=None)
    _checked: bool = PrivateAttr(default=False)
    messages: list[Message] = Field(min_length=1, max_length=MAX_MESSAGES)
    max_completion_tokens: Tokens | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS)
    tools: list[Tool] | None = Field(None, max_length=structured.MAX_TOOLS)
    tool_choice: structured.ToolChoice | None = None
    parallel_tool_calls: bool | None = None
    functions: list[FunctionDefinition] | None = Field(None, max_length=structured.MAX_TOOLS)
    function_call: structured.FunctionCallChoice | None = None
    response_format: ResponseFormat | None = None

    @field_validator("tools", "functions")
    @classmethod
    def _unique(cls, functions):
        return structured.unique_names(functions)

    def completion_cap(self) -> tuple[int | None, str | None]:
        """What the caller asked the completion to be at most, and which parameter said it."""
        if self.max_completion_tokens is not None:
            return self.max_completion_tokens, "max_completion_tokens"
        if self.max_tokens is not None:
            return self.max_tokens, "max_tokens"
        return None, None

    def features(self) -> dict[str, str]:
        """The optional features (FEATURES) this request uses, each with the parameter that asks for it."""
        used = {}
        if self.tools or self.functions:
            used["tools"] = "tools" if self.tools else "functions"
        if self.response_format is not None and self.response_format.type != "text":
            used["response_format"] = "response_format"
        if self.logprobs:
            used["logprobs"] = "logprobs"
        return used

    def legacy_functions(self) -> bool:
        return self.functions is not None or self.function_call is not None

    def constraint(self) -> Constraint | None:
        """What the answer must be (tools, a JSON schema, both, or nothing), checked once: the
        schema checks are the costly part of a parse, and the runtime asks again."""
        if not self._checked:
            self._constraint, self._checked = self._checked_constraint(), True
        return self._constraint

    def _checked_constraint(self) -> Constraint | None:
        answer = structured.response_format_constraint(self.response_format)
        if self.legacy_functions():
            if self.tools is not None or self.tool_choice is not None:
                raise ProtocolError("Use either tools or the legacy functions, not both.", "functions")
            functions = structured.functions_of(self.functions or [], "functions")
            tools = structured.tools_constraint(functions, self.function_call, False, "function_call", legacy=True)
        else:
            functions = structured.functions_of(self.tools or [], "tools")
            tools = structured.tools_constraint(functions, self.tool_choice, self.parallel_tool_calls, "tool_choice")
        if tools is None:
            return answer
        return dataclasses.replace(tools, schema=answer.schema if answer is not None else None)

    def conversation(self) -> list[dict]:
        """The messages as engines are sent them: text content, tool calls as tool calls (the legacy
        function_call / function messages become them, with ids by position)."""
        messages, last_call = [], {}
        for i, m in enumerate(self.messages):
            message = {"role": m.role, "content": m.text() if m.content is not None else None}
            calls = [call.model_dump() for call in m.tool_calls or ()]
            if m.function_call is not None:
                calls.append({"id": f"call_{i}", "type": "function", "function": m.function_call.model_dump()})
                last_call[m.function_call.name] = f"call_{i}"
            if calls:
                message["tool_calls"] = calls
            if m.role == "tool":
                message["tool_call_id"] = m.tool_call_id
            if m.role == "function":
                message.update(role="tool", tool_call_id=last_call.get(m.name, f"call_{m.name}"), name=m.name)
            elif m.name is not None:
                message["name"] = m.name
            messages.append(message)
        return messages

    def tool_fields(self) -> dict:
        """What engines are sent of tools and structured outputs (the legacy forms as tools)."""
        fields = {}
        if self.legacy_functions():
            if self.functions:
                fields["tools"] = [
                    {"type": "function", "function": f.model_dump(exclude_none=True)} for f in self.functions
                ]
                choice = self.function_call
                if isinstance(choice, structured.NamedFunction):
                    choice = {"type": "function", "function": {"name": choice.name}}
                fields["tool_choice"] = choice or "auto"
                fields["parallel_tool_calls"] = False
        else:
            if self.tools is not None:
                fields["tools"] = [tool.model_dump(exclude_none=True) for tool in self.tools]
            if self.tool_choice is not None:
                choice = self.tool_choice
                fields["tool_choice"] = choice if isinstance(choice, str) else choice.model_dump()
            if self.parallel_tool_calls is not None:
                fields["parallel_tool_calls"] = self.parallel_tool_calls
        if self.response_format is not None:
            fields["response_format"] = self.response_format.model_dump(exclude_none=True, by_alias=True)
        return fields


def _one_prompt_schema(schema: dict) -> None:
    text = {"type": "string", "minLength": 1}
    schema.clear()
    schema.update({"anyOf": [text, {"type": "array", "minItems": 1, "maxItems": 1, "items": text}]})


class CompletionRequest(Generation):
    prompt: str | list[str] = Field(json_schema_extra=_one_prompt_schema)
    logprobs: int | None = Field(None, ge=0, le=5)
    echo: Annotated[Any, WithJsonSchema(off(False))] = None
    suffix: Annotated[Any, WithJsonSchema(off(""))] = None
    best_of: Annotated[Any, WithJsonSchema(off(1))] = None

    @field_validator("prompt", mode="before")
    @classmethod
    def _one_prompt(cls, value):
        if isinstance(value, list) and len(value) == 1:
            value = value[0]
        if not isinstance(value, str) or not value:
            raise ValueError("must be a non-empty string (one prompt per request)")
        return value

    def completion_cap(self) -> tuple[int | None, str | None]:
        return (self.max_tokens, "max_tokens") if self.max_tokens is not None else (None, None)

    def features(self) -> dict[str, str]:
        return {"logprobs": "logprobs"} if self.logprobs is not None else {}


# parameter -> (values that mean "off", the message refusing any other)
UNSUPPORTED = {
    "best_of": ((1,), "Only best_of=1 is supported: use n for several completions."),
    "echo": ((False,), "echo is not supported."),
    "suffix": (("",), "suffix (insertion) is not supported."),
}


def _is_off(value, off: tuple) -> bool:
    # True == 1 in Python: `n: true` is not n=1.
    return value is None or any(value == o and isinstance(value, bool) == isinstance(o, bool) for o in off)


def _refuse_unsupported(request: Generation) -> None:
    for key, (off, message) in UNSUPPORTED.items():
        if key in type(request).model_fields and not _is_off(getattr(request, key), off):
            raise ProtocolError(message, key, "unsupported_parameter")


def _parse(model: type[Generation], body: dict) -> Generation:
    try:
        request = model.model_validate(body)
    except ValidationError as error:
        raise from_validation(error) from None
    if request.stream_options is not None and not request.stream:
        raise ProtocolError("'stream_options' is only allowed when 'stream' is true.", "stream_options")
    _refuse_unsupported(request)
    if isinstance(request, ChatCompletionRequest):
        if request.top_logprobs and not request.logprobs:
            raise ProtocolError("'top_logprobs' needs 'logprobs' to be true.", "top_logprobs")
        request.constraint()  # checked here, so a bad schema or tool_choice is a 400 before any engine
    return request


def parse_chat(body: dict) -> ChatCompletionRequest:
    return _parse(ChatCompletionRequest, body)


def parse_completion(body: dict) -> CompletionRequest:
    return _parse(CompletionRequest, body)
