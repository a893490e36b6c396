"""The OpenAI answer bodies, built in one place for the runtime (which answers plain requests) and
the gateway (which assembles plain answers from a stream). Django-free, like the runtime."""

from __future__ import annotations


def usage(prompt: int, completion: int, cached: int | None = None) -> dict:
    """A usage object: the prompt once, every choice's completion tokens, and, where the model
    server said how many prompt tokens it had cached, those."""
    found = {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}
    if cached is not None:
        found["prompt_tokens_details"] = {"cached_tokens": cached}
    return found


def completion(*, chat: bool, id: str, created: int, model: str, choices: list[dict], usage: dict) -> dict:
    """A non-streamed chat.completion (chat) or text_completion."""
    body = {
        "id": id,
        "object": "chat.completion" if chat else "text_completion",
        "created": created,
        "model": model,
        "choices": choices,
        "usage": usage,
    }
    if chat:
        body["system_fingerprint"] = None
    return body


def pieces(choice: dict, chat: bool) -> int:
    """Pieces of answer in a streamed chunk's choice (what metering's floor counts): its text, each
    tool-call fragment, a legacy function_call."""
    if not chat:
        return 1 if isinstance(choice.get("text"), str) and choice["text"] else 0
    delta = choice.get("delta") or {}
    text = 1 if isinstance(delta.get("content"), str) and delta["content"] else 0
    return text + len(delta.get("tool_calls") or ()) + (1 if isinstance(delta.get("function_call"), dict) else 0)


class Assembly:
    """A streamed answer's chunks in, the whole answer's choices out: content, tool calls (their
    argument fragments joined), the legacy function_call, log-probabilities and finish reasons, per
    choice. `add` says how many pieces of answer a chunk carried (for metering's floor)."""

    def __init__(self, chat: bool):
        self.chat = chat
        self._choices: dict[int, dict] = {}

    def add(self, choice: dict) -> int:
        index = choice.get("index") if isinstance(choice.get("index"), int) else 0
        state = self._choices.setdefault(
            index, {"text": [], "calls": {}, "function_call": None, "logprobs": None, "finish": None}
        )
        state["finish"] = choice.get("finish_reason") or state["finish"]
        self._logprobs(state, choice.get("logprobs"))
        if not self.chat:
            text = choice.get("text")
            if isinstance(text, str) and text:
                state["text"].append(text)
            return pieces(choice, self.chat)
        delta = choice.get("delta") or {}
        if isinstance(delta.get("content"), str) and delta["content"]:
            state["text"].append(delta["content"])
        for call in delta.get("tool_calls") or ():
            slot = state["calls"].setdefault(
                call.get("index", 0), {"id": None, "type": "function", "function": {"name": "", "arguments": ""}}
            )
            slot["id"] = call.get("id") or slot["id"]
            function = call.get("function") or {}
            slot["function"]["name"] += function.get("name") or ""
            slot["function"]["arguments"] += function.get("arguments") or ""
        if isinstance(delta.get("function_call"), dict):
            legacy = state["function_call"] = state["function_call"] or {"name": "", "arguments": ""}
            legacy["name"] += delta["function_call"].get("name") or ""
            legacy["arguments"] += delta["function_call"].get("arguments") or ""
        return pieces(choice, self.chat)

    def _logprobs(self, state: dict, logprobs) -> None:
        if not isinstance(logprobs, dict):
            return
        if state["logprobs"] is None:
            state["logprobs"] = {key: [] for key in logprobs if isinstance(logprobs[key], list)}
            if self.chat:
                state["logprobs"]["refusal"] = None
        for key, values in logprobs.items():
            if isinstance(values, list):
                state["logprobs"].setdefault(key, []).extend(values)

    def choices(self) -> list[dict]:
        whole = []
        for index in sorted(self._choices):
            state = self._choices[index]
            text = "".join(state["text"])
            if not self.chat:
                whole.append(
                    {"index": index, "text": text, "logprobs": state["logprobs"], "finish_reason": state["finish"]}
                )
                continue
            message = {"role": "assistant", "content": text, "refusal": None}
            if state["calls"]:
                message["tool_calls"] = [state["calls"][i] for i in sorted(state["calls"])]
                message["content"] = text or None
            if state["function_call"] is not None:
                message["function_call"] = state["function_call"]
                message["content"] = text or None
            whole.append(
                {"index": index, "message": message, "logprobs": state["logprobs"], "finish_reason": state["finish"]}
            )
        return whole or [
            {
                "index": 0,
                **({"message": {"role": "assistant", "content": "", "refusal": None}} if self.chat else {"text": ""}),
                "logprobs": None,
                "finish_reason": None,
            }
        ]


def as_legacy_functions(event: dict) -> dict:
    """A chat chunk of tool calls in the legacy functions' words: `function_call` deltas and the
    finish reason "function_call" (one call: legacy requests never ask for parallel calls)."""
    for choice in event.get("choices") or ():
        delta = choice.get("delta") or {}
        calls = delta.pop("tool_calls", None)
        if calls:
            function = calls[0].get("function") or {}
            delta["function_call"] = {key: function[key] for key in ("name", "arguments") if key in function}
        if choice.get("finish_reason") == "tool_calls":
            choice["finish_reason"] = "function_call"
    return event
