"""What the gateway accepts on /v1/chat/completions and /v1/completions, checked once for every
engine (our runtime, vLLM, an OpenAI-compatible upstream).

An allow-list of OpenAI parameters with their types and ranges: anything else is refused with a
400 that names the parameter, and only the checked parameters are forwarded, so an engine's own
extras (`chat_template`, `guided_json`, `best_of`, prompt arrays, `n>1`, ...) can never be reached
through the platform, and every engine gets the same request. Features whose answers the gateway
does not relay (several choices, log-probabilities, tool calls, structured output) are refused
here rather than half-served.
"""

from __future__ import annotations

from dataclasses import dataclass

from serving.gateway.http import GatewayError
from tenancy.api.parsers import nests_within

CHAT = "chat.completions"
ROLES = ("system", "developer", "user", "assistant")
MAX_DEPTH = 6  # body → messages → message → content → part → text
MAX_MESSAGES = 2048
MAX_STOP_CHARS = 500
MAX_LOGIT_BIAS = 300
INT64 = (-(2**63), 2**63 - 1)

# Accepted because they do not change the answer, and not forwarded.
IGNORED = frozenset(
    {"user", "metadata", "store", "service_tier", "parallel_tool_calls", "prompt_cache_key", "safety_identifier"}
)
UNSUPPORTED = {  # parameter -> (values that mean "off", message)
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
SAMPLING = ("temperature", "top_p", "presence_penalty", "frequency_penalty")
RANGES = {
    "temperature": (0.0, 2.0),
    "top_p": (0.0, 1.0),
    "presence_penalty": (-2.0, 2.0),
    "frequency_penalty": (-2.0, 2.0),
}
CHAT_KEYS = frozenset({"model", "messages", "stream", "stream_options", "max_tokens", "max_completion_tokens"})
COMPLETION_KEYS = frozenset({"model", "prompt", "stream", "stream_options", "max_tokens"})
COMMON_KEYS = frozenset({*SAMPLING, "stop", "seed", "logit_bias"}) | IGNORED | frozenset(UNSUPPORTED)


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


def invalid(message: str, param: str | None, code: str = "invalid_value") -> GatewayError:
    return GatewayError(400, message, param=param, code=code)


def _number(body: dict, key: str) -> float | None:
    value = body.get(key)
    if value is None:
        return None
    low, high = RANGES[key]
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise invalid(f"'{key}' must be a number.", key, "invalid_type")
    if not low <= value <= high:
        raise invalid(f"'{key}' must be between {low:g} and {high:g}, got {value}.", key)
    return value


def _integer(body: dict, key: str, low: int, high: int) -> int | None:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise invalid(f"'{key}' must be an integer.", key, "invalid_type")
    if not low <= value <= high:
        raise invalid(f"'{key}' must be between {low} and {high}, got {value}.", key)
    return value


def _stop(body: dict) -> list[str] | None:
    stop = body.get("stop")
    if stop is None:
        return None
    stops = [stop] if isinstance(stop, str) else stop
    if not isinstance(stops, list) or len(stops) > 4 or not all(isinstance(s, str) for s in stops):
        raise invalid("'stop' must be a string or a list of at most 4 strings.", "stop")
    if any(len(s) > MAX_STOP_CHARS for s in stops):
        raise invalid(f"Each 'stop' string may have at most {MAX_STOP_CHARS} characters.", "stop")
    return [s for s in stops if s] or None


def _logit_bias(body: dict) -> dict[str, float] | None:
    bias = body.get("logit_bias")
    if bias is None:
        return None
    if not isinstance(bias, dict) or len(bias) > MAX_LOGIT_BIAS:
        raise invalid(f"'logit_bias' must map at most {MAX_LOGIT_BIAS} token ids to numbers.", "logit_bias")
    for key, value in bias.items():
        if not key.isdigit() or isinstance(value, bool) or not isinstance(value, int | float) or abs(value) > 100:
            raise invalid(f"'logit_bias' entry {key!r}: a token id mapped to a bias in [-100, 100].", "logit_bias")
    return bias or None


def _stream(body: dict) -> tuple[bool, bool]:
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise invalid("'stream' must be a boolean.", "stream", "invalid_type")
    options = body.get("stream_options")
    if options is None:
        return bool(stream), False
    if not stream:
        raise invalid("'stream_options' is only allowed when 'stream' is true.", "stream_options")
    if not isinstance(options, dict) or set(options) - {"include_usage", "include_obfuscation"}:
        raise invalid("'stream_options' accepts include_usage.", "stream_options")
    include = options.get("include_usage")
    if include is not None and not isinstance(include, bool):
        raise invalid("'stream_options.include_usage' must be a boolean.", "stream_options")
    return True, bool(include)


def _unsupported(body: dict) -> None:
    for key, (off, message) in UNSUPPORTED.items():
        value = body.get(key)
        mistyped = isinstance(value, bool) and not any(isinstance(o, bool) for o in off)  # True == 1
        if value is not None and (mistyped or value not in off):
            raise invalid(message, key, "unsupported_parameter")


def _metadata(body: dict) -> None:
    user, metadata = body.get("user"), body.get("metadata")
    if user is not None and (not isinstance(user, str) or len(user) > 256):
        raise invalid("'user' must be a string of at most 256 characters.", "user")
    if metadata is not None and (
        not isinstance(metadata, dict)
        or len(metadata) > 16
        or not all(
            isinstance(k, str) and isinstance(v, str) and len(k) <= 64 and len(v) <= 512 for k, v in metadata.items()
        )
    ):
        raise invalid("'metadata' must map at most 16 short strings to strings.", "metadata")


def _common(body: dict, keys: frozenset[str]) -> dict:
    if not nests_within(body, MAX_DEPTH):
        raise invalid(f"The request body nests deeper than {MAX_DEPTH} levels.", None, "invalid_json")
    unknown = sorted(set(body) - keys - COMMON_KEYS)
    if unknown:
        raise invalid(f"Unrecognized request argument supplied: {unknown[0]}", unknown[0], "unknown_parameter")
    _unsupported(body)
    _metadata(body)
    forward = {key: value for key in SAMPLING if (value := _number(body, key)) is not None}
    seed = _integer(body, "seed", *INT64)
    for key, value in (("seed", seed), ("stop", _stop(body)), ("logit_bias", _logit_bias(body))):
        if value is not None:
            forward[key] = value
    return forward


def _content(message: dict, index: int) -> str:
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list) and content:
        texts = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise invalid(f"messages[{index}].content: only text parts are supported.", f"messages.{index}.content")
            texts.append(part["text"])
        return "".join(texts)
    raise invalid(f"messages[{index}].content must be a string or a list of text parts.", f"messages.{index}.content")


def _messages(body: dict) -> list[dict]:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise invalid("'messages' must be a non-empty list.", "messages")
    if len(messages) > MAX_MESSAGES:
        raise invalid(f"'messages' may hold at most {MAX_MESSAGES} messages.", "messages")
    checked = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in ROLES:
            raise invalid(f"messages[{i}].role must be one of {', '.join(ROLES)}.", f"messages.{i}.role")
        extra = set(message) - {"role", "content", "name", "refusal"}
        if extra:
            raise invalid(f"messages[{i}]: unsupported field '{sorted(extra)[0]}'.", f"messages.{i}")
        name = message.get("name")
        if name is not None and not isinstance(name, str):
            raise invalid(f"messages[{i}].name must be a string.", f"messages.{i}.name")
        checked.append({"role": message["role"], "content": _content(message, i)})
    return checked


def chat(body: dict) -> Checked:
    forward = _common(body, CHAT_KEYS)
    stream, include_usage = _stream(body)
    messages = _messages(body)
    max_tokens = None
    for key in ("max_completion_tokens", "max_tokens"):
        max_tokens = _integer(body, key, 1, 2**31)
        if max_tokens is not None:
            break
    forward["messages"] = messages
    text = "".join(m["content"] for m in messages)
    return Checked(body["model"], forward, stream, include_usage, max_tokens, text)


def completion(body: dict) -> Checked:
    forward = _common(body, COMPLETION_KEYS)
    stream, include_usage = _stream(body)
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if not isinstance(prompt, str) or not prompt:
        raise invalid("'prompt' must be a non-empty string (one prompt per request).", "prompt")
    forward["prompt"] = prompt
    return Checked(body["model"], forward, stream, include_usage, _integer(body, "max_tokens", 1, 2**31), prompt)


def check(body: dict, endpoint: str) -> Checked:
    return chat(body) if endpoint == CHAT else completion(body)
