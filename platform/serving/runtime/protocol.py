"""Parsing OpenAI-style requests into prompts and sampling parameters, refusing what the
runtime cannot honour with a 400 that names the parameter (never silently ignoring it)."""

from __future__ import annotations

from dataclasses import dataclass

from serving.runtime.sampling import SamplingParams


class RequestError(Exception):
    def __init__(self, message: str, param: str | None = None, status: int = 400, code: str | None = None):
        super().__init__(message)
        self.message, self.param, self.status, self.code = message, param, status, code

    def body(self) -> dict:
        kind = "invalid_request_error" if self.status < 500 else "server_error"
        if self.status == 404:
            kind = "invalid_request_error"
        return {"error": {"message": self.message, "type": kind, "param": self.param, "code": self.code}}


@dataclass
class Parsed:
    model: str
    prompt_ids: list[int]
    params: SamplingParams
    stream: bool
    include_usage: bool
    continuous_usage: bool


MAX_STOP_CHARS = 500
ROLES = {"system", "user", "assistant", "developer"}
# Accepted because they do not change the result.
IGNORED = {"user", "metadata", "store", "service_tier", "parallel_tool_calls", "prompt_cache_key", "safety_identifier"}
CHAT_KEYS = {
    "model",
    "messages",
    "stream",
    "stream_options",
    "max_tokens",
    "max_completion_tokens",
    "temperature",
    "top_p",
    "n",
    "stop",
    "seed",
    "presence_penalty",
    "frequency_penalty",
    "logit_bias",
    "logprobs",
    "top_logprobs",
    "response_format",
    "tools",
    "tool_choice",
    "functions",
    "function_call",
} | IGNORED
COMPLETION_KEYS = {
    "model",
    "prompt",
    "stream",
    "stream_options",
    "max_tokens",
    "temperature",
    "top_p",
    "n",
    "stop",
    "seed",
    "presence_penalty",
    "frequency_penalty",
    "logit_bias",
    "logprobs",
    "echo",
    "suffix",
    "best_of",
} | IGNORED


def _number(body: dict, key: str, default: float, low: float, high: float) -> float:
    value = body.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise RequestError(f"'{key}' must be a number.", key)
    if not low <= value <= high:
        raise RequestError(f"'{key}' must be between {low:g} and {high:g}, got {value}.", key)
    return float(value)


def _integer(body: dict, key: str, low: int) -> int | None:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise RequestError(f"'{key}' must be an integer.", key)
    if value < low:
        raise RequestError(f"'{key}' must be at least {low}, got {value}.", key)
    return value


def _refuse(body: dict, key: str, allowed, message: str) -> None:
    if key in body and body[key] is not None and body[key] not in allowed:
        raise RequestError(message, key)


def _common(body: dict, known: set[str]) -> None:
    unknown = sorted(set(body) - known)
    if unknown:
        raise RequestError(f"Unrecognized request argument(s): {', '.join(unknown)}.", unknown[0])
    if not isinstance(body.get("model"), str) or not body["model"]:
        raise RequestError("'model' is required.", "model")
    _refuse(body, "n", (1,), "Only n=1 is supported: request several completions separately.")
    _refuse(body, "logprobs", (False, 0), "logprobs are not supported by this model server.")
    _refuse(body, "top_logprobs", (0,), "top_logprobs are not supported by this model server.")
    _refuse(body, "stream", (True, False), "'stream' must be a boolean.")


def _stop(body: dict) -> list[str]:
    stop = body.get("stop")
    if stop is None:
        return []
    stops = [stop] if isinstance(stop, str) else stop
    if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops) or len(stops) > 4:
        raise RequestError("'stop' must be a string or a list of at most 4 strings.", "stop")
    if any(len(s) > MAX_STOP_CHARS for s in stops):
        # Every generated token is matched against each stop string: unbounded ones would let one
        # request slow down the whole batch.
        raise RequestError(f"Each 'stop' string may have at most {MAX_STOP_CHARS} characters.", "stop")
    return [s for s in stops if s]


def _logit_bias(body: dict, vocab_size: int) -> dict[int, float]:
    bias = body.get("logit_bias") or {}
    if not isinstance(bias, dict):
        raise RequestError("'logit_bias' must map token ids to numbers.", "logit_bias")
    parsed = {}
    for key, value in bias.items():
        try:
            token = int(key)
        except (TypeError, ValueError):
            raise RequestError(f"'logit_bias' key {key!r} is not a token id.", "logit_bias") from None
        if (
            not 0 <= token < vocab_size
            or isinstance(value, bool)
            or not isinstance(value, (int, float))
            or not -100 <= value <= 100
        ):
            raise RequestError(
                f"'logit_bias' entry {key!r}: token id within the vocabulary, bias in [-100, 100].", "logit_bias"
            )
        parsed[token] = float(value)
    return parsed


def _stream_options(body: dict) -> tuple[bool, bool]:
    options = body.get("stream_options")
    if options is None:
        return False, False
    if not body.get("stream"):
        raise RequestError("'stream_options' is only allowed when 'stream' is true.", "stream_options")
    if not isinstance(options, dict) or set(options) - {
        "include_usage",
        "continuous_usage_stats",
        "include_obfuscation",
    }:
        raise RequestError("'stream_options' accepts include_usage and continuous_usage_stats.", "stream_options")
    return bool(options.get("include_usage")), bool(options.get("continuous_usage_stats"))


def _params(body: dict, prompt_len: int, max_model_len: int, vocab_size: int, *, chat: bool) -> SamplingParams:
    prompt_param = "messages" if chat else "prompt"
    room = max_model_len - prompt_len
    if room <= 0:
        raise RequestError(
            f"This model's maximum context length is {max_model_len} tokens, but the prompt has {prompt_len} tokens.",
            prompt_param,
        )
    requested, key = None, "max_tokens"
    for candidate in ("max_completion_tokens", "max_tokens") if chat else ("max_tokens",):
        requested = _integer(body, candidate, 1)
        if requested is not None:
            key = candidate
            break
    if requested is not None and requested > room:
        raise RequestError(
            f"This model's maximum context length is {max_model_len} tokens. However, you requested "
            f"{prompt_len + requested} tokens ({prompt_len} in the prompt, {requested} for the "
            "completion). Please reduce the prompt or the completion length.",
            key,
        )
    return SamplingParams(
        max_tokens=requested or room,
        temperature=_number(body, "temperature", 1.0, 0.0, 2.0),
        top_p=_number(body, "top_p", 1.0, 0.0, 1.0) or 1e-9,
        stop=_stop(body),
        seed=_integer(body, "seed", -(2**63)),
        presence_penalty=_number(body, "presence_penalty", 0.0, -2.0, 2.0),
        frequency_penalty=_number(body, "frequency_penalty", 0.0, -2.0, 2.0),
        logit_bias=_logit_bias(body, vocab_size),
    )


def _content(message: dict, index: int) -> str:
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise RequestError(f"messages[{index}].content: only text parts are supported.", f"messages.{index}")
            texts.append(part["text"])
        return "".join(texts)
    raise RequestError(f"messages[{index}].content must be a string or a list of text parts.", f"messages.{index}")


def parse_chat(body: dict, tokenizer, max_model_len: int) -> Parsed:
    _common(body, CHAT_KEYS)
    for key, message in (
        ("tools", "Tool calling is not supported by this model."),
        ("functions", "Function calling is not supported by this model."),
    ):
        if body.get(key):
            raise RequestError(message, key)
    _refuse(body, "tool_choice", ("none",), "Tool calling is not supported by this model.")
    _refuse(body, "function_call", ("none",), "Function calling is not supported by this model.")
    response_format = body.get("response_format")
    if response_format is not None and (not isinstance(response_format, dict) or response_format.get("type") != "text"):
        raise RequestError("Only response_format {'type': 'text'} is supported.", "response_format")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise RequestError("'messages' must be a non-empty list.", "messages")
    conversation = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in ROLES:
            raise RequestError(
                f"messages[{i}].role must be one of system, developer, user, assistant.", f"messages.{i}.role"
            )
        role = "system" if message["role"] == "developer" else message["role"]
        conversation.append({"role": role, "content": _content(message, i)})
    prompt_ids = tokenizer.apply_chat_template(
        conversation, add_generation_prompt=True, tokenize=True, return_dict=False
    )
    include_usage, continuous = _stream_options(body)
    return Parsed(
        body["model"],
        list(prompt_ids),
        _params(body, len(prompt_ids), max_model_len, len(tokenizer), chat=True),
        bool(body.get("stream")),
        include_usage,
        continuous,
    )


def parse_completion(body: dict, tokenizer, max_model_len: int) -> Parsed:
    _common(body, COMPLETION_KEYS)
    _refuse(body, "echo", (False,), "echo is not supported by this model server.")
    _refuse(body, "suffix", ("",), "suffix (insertion) is not supported by this model.")
    _refuse(body, "best_of", (1,), "Only best_of=1 is supported.")
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if not isinstance(prompt, str) or not prompt:
        raise RequestError("'prompt' must be a non-empty string (one prompt per request).", "prompt")
    prompt_ids = tokenizer(prompt, add_special_tokens=True)["input_ids"]
    include_usage, continuous = _stream_options(body)
    return Parsed(
        body["model"],
        list(prompt_ids),
        _params(body, len(prompt_ids), max_model_len, len(tokenizer), chat=False),
        bool(body.get("stream")),
        include_usage,
        continuous,
    )
