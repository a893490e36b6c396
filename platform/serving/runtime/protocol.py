"""From a parsed OpenAI-style request (serving.protocol, the gateway's own parser) to a prompt's
token ids and sampling parameters, refusing what this runtime cannot honour with a 400 that names
the parameter (never silently ignoring it): a prompt longer than the context, a completion that
cannot fit, a logit bias outside the vocabulary."""

from __future__ import annotations

from dataclasses import dataclass

from serving.protocol import ProtocolError
from serving.protocol import generation as protocol
from serving.protocol.structured import Constraint
from serving.runtime import tool_calls
from serving.runtime.sampling import SamplingParams


class RequestError(Exception):
    def __init__(self, message: str, param: str | None = None, status: int = 400, code: str | None = None):
        super().__init__(message)
        self.message, self.param, self.status, self.code = message, param, status, code

    def body(self) -> dict:
        kind = "invalid_request_error" if self.status < 500 else "server_error"
        return {"error": {"message": self.message, "type": kind, "param": self.param, "code": self.code}}


@dataclass
class Parsed:
    model: str
    prompt_ids: list[int]
    params: SamplingParams
    stream: bool
    include_usage: bool
    continuous_usage: bool
    n: int = 1
    constraint: Constraint | None = None
    constraint_param: str | None = None  # the parameter a grammar failure is blamed on


def _logit_bias(request: protocol.Generation, vocab_size: int) -> dict[int, float]:
    parsed = {int(key): value for key, value in (request.logit_bias or {}).items()}
    if any(not 0 <= token < vocab_size for token in parsed):
        raise RequestError(f"'logit_bias' names a token id outside the vocabulary (0-{vocab_size - 1}).", "logit_bias")
    return parsed


def _params(request: protocol.Generation, prompt_len: int, max_model_len: int, vocab_size: int) -> SamplingParams:
    chat = isinstance(request, protocol.ChatCompletionRequest)
    room = max_model_len - prompt_len
    if room <= 0:
        raise RequestError(
            f"This model's maximum context length is {max_model_len} tokens, but the prompt has {prompt_len} tokens.",
            "messages" if chat else "prompt",
        )
    requested, key = request.completion_cap()
    if requested is not None and requested > room:
        raise RequestError(
            f"This model's maximum context length is {max_model_len} tokens. However, you requested "
            f"{prompt_len + requested} tokens ({prompt_len} in the prompt, {requested} for the "
            "completion). Please reduce the prompt or the completion length.",
            key,
        )
    return SamplingParams(
        max_tokens=requested or room,
        temperature=1.0 if request.temperature is None else request.temperature,
        top_p=(1.0 if request.top_p is None else request.top_p) or 1e-9,
        stop=request.stops(),
        seed=request.seed,
        presence_penalty=request.presence_penalty or 0.0,
        frequency_penalty=request.frequency_penalty or 0.0,
        logit_bias=_logit_bias(request, vocab_size),
        logprobs=_logprobs(request),
    )


def _logprobs(request: protocol.Generation) -> int | None:
    if isinstance(request, protocol.ChatCompletionRequest):
        return (request.top_logprobs or 0) if request.logprobs else None
    return request.logprobs


def _parsed(
    request: protocol.Generation, prompt_ids: list[int], max_model_len: int, vocab_size: int, constraint=None
) -> Parsed:
    param = None
    if constraint is not None:
        param = "tools" if constraint.kind == "tools" else "response_format"
    return Parsed(
        request.model,
        list(prompt_ids),
        _params(request, len(prompt_ids), max_model_len, vocab_size),
        bool(request.stream),
        request.include_usage(),
        request.continuous_usage(),
        request.n or 1,
        constraint,
        param,
    )


def _protocol(parse, body: dict):
    try:
        return parse(body)
    except ProtocolError as problem:
        raise RequestError(problem.message, problem.param, 400, problem.code) from None


def parse_chat(body: dict, tokenizer, max_model_len: int) -> Parsed:
    request = _protocol(protocol.parse_chat, body)
    constraint = request.constraint()  # checked by the parse already (and kept)
    # The chat templates we serve know system, user and assistant; a developer message is a system one.
    conversation = [{**m, "role": "system" if m["role"] == "developer" else m["role"]} for m in request.conversation()]
    prompt_ids = tool_calls.prompt_ids(tokenizer, conversation, constraint)
    return _parsed(request, prompt_ids, max_model_len, len(tokenizer), constraint)


def parse_completion(body: dict, tokenizer, max_model_len: int) -> Parsed:
    request = _protocol(protocol.parse_completion, body)
    prompt_ids = tokenizer(request.prompt, add_special_tokens=True)["input_ids"]
    return _parsed(request, prompt_ids, max_model_len, len(tokenizer))
