"""The OpenAI answer bodies, built in one place for the runtime (which answers plain requests) and
the gateway (which assembles plain answers from a stream). Django-free, like the runtime."""

from __future__ import annotations


def completion(*, chat: bool, id: str, created: int, model: str, text: str, finish_reason, usage: dict) -> dict:
    """A non-streamed chat.completion (chat) or text_completion, one choice."""
    if chat:
        choice = {
            "index": 0,
            "message": {"role": "assistant", "content": text, "refusal": None},
            "logprobs": None,
            "finish_reason": finish_reason,
        }
        return {
            "id": id,
            "object": "chat.completion",
            "created": created,
            "model": model,
            "choices": [choice],
            "usage": usage,
            "system_fingerprint": None,
        }
    return {
        "id": id,
        "object": "text_completion",
        "created": created,
        "model": model,
        "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason}],
        "usage": usage,
    }
