"""What the gateway accepts on /v1/chat/completions and /v1/completions, checked once for every
engine (our runtime, vLLM, an OpenAI-compatible upstream): the request is parsed with the wire
protocol (serving.protocol.generation), and only what it parsed is forwarded, so every engine gets
the same request and none of an engine's own extras can be reached through the platform.

A published endpoint's rules apply to the parsed request: its defaults fill the parameters the
caller did not set, its system prompt comes first, and its cap holds whichever of max_tokens and
max_completion_tokens asked for more.
"""

from __future__ import annotations

from dataclasses import dataclass

import orjson

from serving.gateway.http import GatewayError
from serving.protocol import ProtocolError, structured
from serving.protocol import generation as protocol
from tenancy.api.parsers import nests_within

CHAT = "chat.completions"
# What the body may nest: a JSON schema's own bound (serving.protocol.structured) inside the
# envelope of a tool (body → tools → tool → function → parameters) and a little room.
MAX_DEPTH = structured.MAX_SCHEMA_DEPTH + 8


@dataclass(frozen=True)
class Checked:
    """A request the gateway understood: what to forward (less max_tokens, which the gateway sets
    from its reservation), and what the client asked for."""

    model: str
    forward: dict
    stream: bool
    include_usage: bool
    max_tokens: int | None
    prompt_text: str  # what the prompt estimate is computed from
    choices: int = 1  # n: every choice may generate max_tokens
    legacy_functions: bool = False  # asked with `functions`: answered with `function_call`


def invalid(message: str, param: str | None, code: str = "invalid_value") -> GatewayError:
    return GatewayError(400, message, param=param, code=code)


def parse(body: dict, endpoint: str) -> protocol.Generation:
    if not nests_within(body, MAX_DEPTH):
        raise invalid(f"The request body nests deeper than {MAX_DEPTH} levels.", None, "invalid_json")
    try:
        return protocol.parse_chat(body) if endpoint == CHAT else protocol.parse_completion(body)
    except ProtocolError as problem:
        raise invalid(problem.message, problem.param, problem.code) from None


def with_endpoint(request: protocol.Generation, defaults: dict, system_prompt: str) -> protocol.Generation:
    """An endpoint's defaults (for what the caller left unset) and system prompt (chat: before the
    caller's own messages), on the parsed request; the defaults were checked when they were saved."""
    update = {key: value for key, value in defaults.items() if getattr(request, key, None) is None}
    if system_prompt and isinstance(request, protocol.ChatCompletionRequest):
        update["messages"] = [protocol.Message(role="system", content=system_prompt), *request.messages]
    if not update:
        return request
    return type(request).model_validate({**request.model_dump(exclude_unset=True), **update})


def checked(request: protocol.Generation) -> Checked:
    forward = request.sampling()
    if request.n is not None:
        forward["n"] = request.n
    legacy = False
    if isinstance(request, protocol.ChatCompletionRequest):
        forward["messages"] = request.conversation()
        forward.update(request.tool_fields())
        if request.logprobs is not None:
            forward["logprobs"] = request.logprobs
        if request.top_logprobs is not None:
            forward["top_logprobs"] = request.top_logprobs
        # Tool definitions and earlier calls are prompt too (and what a template adds for them).
        text = "".join(message["content"] or "" for message in forward["messages"])
        text += orjson.dumps(
            [forward.get("tools"), [m.get("tool_calls") for m in forward["messages"]], forward.get("response_format")]
        ).decode()
        legacy = request.legacy_functions()
    else:
        forward["prompt"] = text = request.prompt
        if request.logprobs is not None:
            forward["logprobs"] = request.logprobs
    max_tokens, _ = request.completion_cap()
    return Checked(
        request.model, forward, bool(request.stream), request.include_usage(), max_tokens, text, request.n or 1, legacy
    )


def check(body: dict, endpoint: str) -> Checked:
    return checked(parse(body, endpoint))
