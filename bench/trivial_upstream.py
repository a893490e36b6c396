"""A trivial OpenAI-compatible model server for the gateway benchmark: answers at once, a few
tokens, streaming (with per-chunk usage, as our runtime and vLLM do) or not. Raw ASGI, so it
costs as little as possible. Run with: uvicorn bench.trivial_upstream:app --port N"""

import json
import time


def _chunk(content=None, finish=None, usage=None, choices=True):
    payload = {
        "id": "chatcmpl-bench",
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": "bench-model",
        "choices": [],
    }
    if choices:
        delta = {} if content is None else {"content": content}
        payload["choices"] = [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]
    payload["usage"] = usage
    return f"data: {json.dumps(payload)}\n\n".encode()


def _usage(n):
    return {"prompt_tokens": 12, "completion_tokens": n, "total_tokens": 12 + n}


async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    if scope["path"] == "/health":
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": b'{"status": "ok"}'})
        return
    request = json.loads(body or b"{}")
    if request.get("stream"):
        parts = [
            _chunk("", usage=_usage(0)),
            _chunk("Hello", usage=_usage(1)),
            _chunk(" there", usage=_usage(2)),
            _chunk(finish="stop", usage=_usage(2)),
            _chunk(usage=_usage(2), choices=False),
            b"data: [DONE]\n\n",
        ]
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]})
        await send({"type": "http.response.body", "body": b"".join(parts)})
        return
    answer = {
        "id": "chatcmpl-bench",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": "bench-model",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "Hello there"},
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": _usage(2),
    }
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": json.dumps(answer).encode()})
