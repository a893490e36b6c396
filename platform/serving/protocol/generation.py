"""POST /v1/chat/completions and /v1/completions, as OpenAI's clients send them.

Parsed strictly (a number is not a string, `true` is not 1) with every unknown parameter refused
by name, so an engine's own extras (`chat_template`, `guided_json`, prompt arrays, ...) can never
be reached through the platform. Parameters the platform does not act on yet are refused with a
400 naming them (`unsupported`) rather than half-served; those that do not change the answer
(`user`, `metadata`, `store`, ...) are accepted and not forwarded.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, WithJsonSchema, field_validator

from serving.protocol.errors import ProtocolError, from_validation

MAX_MESSAGES = 2048
MAX_STOP_CHARS = 500
MAX_LOGIT_BIAS = 300
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
    return {"enum": [value], "nullable": True, "description": "Only this value for now."}


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


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


class Message(Strict):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart] = Field(json_schema_extra=bounded(min_items=1))
    name: str | None = None
    refusal: str | None = None

    @field_validator("content", mode="before")
    @classmethod
    def _text_or_parts(cls, value):
        return text_or_parts(value, ("text",))

    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(part.text for part in self.content)


def _stops(value):
    stops = [value] if isinstance(value, str) else value
    if not isinstance(stops, list) or len(stops) > 4 or not all(isinstance(s, str) for s in stops):
        raise ValueError("must be a string or a list of at most 4 strings")
    if any(len(s) > MAX_STOP_CHARS for s in stops):
        raise ValueError(f"each stop string may have at most {MAX_STOP_CHARS} characters")
    return value


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
    # What the platform does not do yet: documented as the values that mean "off" (`unsupported`).
    n: Annotated[int | None, WithJsonSchema(off(1))] = None
    logprobs: Annotated[Any, WithJsonSchema(off(False))] = None
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
    messages: list[Message] = Field(min_length=1, max_length=MAX_MESSAGES)
    max_completion_tokens: Tokens | None = None
    top_logprobs: Annotated[Any, WithJsonSchema(off(0))] = None
    tools: Annotated[Any, WithJsonSchema({"type": "array", "maxItems": 0, "description": "Not supported yet."})] = None
    tool_choice: Annotated[Any, WithJsonSchema(off("none"))] = None
    parallel_tool_calls: bool | None = None
    functions: Annotated[Any, WithJsonSchema({"type": "array", "maxItems": 0, "description": "Not supported yet."})] = (
        None
    )
    function_call: Annotated[Any, WithJsonSchema(off("none"))] = None
    response_format: Annotated[Any, WithJsonSchema(TEXT_FORMAT)] = None

    def completion_cap(self) -> tuple[int | None, str | None]:
        """What the caller asked the completion to be at most, and which parameter said it."""
        if self.max_completion_tokens is not None:
            return self.max_completion_tokens, "max_completion_tokens"
        if self.max_tokens is not None:
            return self.max_tokens, "max_tokens"
        return None, None

    def conversation(self) -> list[dict]:
        return [{"role": m.role, "content": m.text()} for m in self.messages]


class CompletionRequest(Generation):
    prompt: str | list[str]
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


# parameter -> (values that mean "off", the message refusing any other)
UNSUPPORTED = {
    "n": ((1,), "Only n=1 is supported: request several completions separately."),
    "best_of": ((1,), "Only best_of=1 is supported."),
    "logprobs": ((False, 0), "logprobs are not supported."),
    "top_logprobs": ((0,), "top_logprobs are not supported."),
    "echo": ((False,), "echo is not supported."),
    "suffix": (("",), "suffix (insertion) is not supported."),
    "tools": (([],), "Tool calling is not supported."),
    "tool_choice": (("none",), "Tool calling is not supported."),
    "functions": (([],), "Function calling is not supported."),
    "function_call": (("none",), "Function calling is not supported."),
    "response_format": (({"type": "text"},), "Only response_format {'type': 'text'} is supported."),
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
    return request


def parse_chat(body: dict) -> ChatCompletionRequest:
    return _parse(ChatCompletionRequest, body)


def parse_completion(body: dict) -> CompletionRequest:
    return _parse(CompletionRequest, body)
