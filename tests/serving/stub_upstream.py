"""Stand-in OpenAI-compatible upstreams for gateway tests, run in the test process: one that behaves
like an `engine=openai` provider (honours n, streams slowly, reports usage only at the end), one
that fails with a 5xx (or answers its headers late), and one that resets the connection before sending any header."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time

import uvicorn


def _chunk(choices, usage=None) -> bytes:
    payload = {"id": "chatcmpl-stub", "object": "chat.completion.chunk", "created": int(time.time()), "model": "m"}
    payload["choices"] = choices
    if usage is not None:
        payload["usage"] = usage
    return f"data: {json.dumps(payload)}\n\n".encode()


class Upstream:
    """An upstream server on a free loopback port. mode: "provider" | "fail" | "reset"."""

    def __init__(self, mode: str, words: int = 40, delay: float = 0.05, head_delay: float = 0):
        self.mode, self.words, self.delay, self.head_delay = mode, words, delay, head_delay
        self.requests: list[dict] = []
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        threading.Thread(target=self._run, daemon=True).start()
        assert self._ready.wait(10)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        if self.mode == "reset":
            self._loop.run_until_complete(asyncio.start_server(self._reset, "127.0.0.1", self.port))
        else:
            config = uvicorn.Config(
                self._app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="off", interface="asgi3"
            )
            self._server = uvicorn.Server(config)
            self._loop.create_task(self._server.serve())
        self._loop.call_later(0.3, self._ready.set)
        self._loop.run_forever()

    async def _reset(self, reader, writer) -> None:
        await reader.read(1024)
        self.requests.append({})
        writer.transport.abort()  # RST before any byte of an answer

    async def _app(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        request = json.loads(body or b"{}")
        self.requests.append(request)
        if self.mode == "fail":
            await send({"type": "http.response.start", "status": 500, "headers": [(b"content-type", b"text/html")]})
            await send({"type": "http.response.body", "body": b"<html><h1>Internal Server Error</h1></html>"})
            return
        n = request.get("n") or 1
        words = min(self.words, request.get("max_tokens") or self.words)  # as any provider does
        await asyncio.sleep(self.head_delay)  # a provider slow to answer at all
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]})
        for i in range(words):
            choices = [{"index": c, "delta": {"content": f"w{i} "}, "finish_reason": None} for c in range(n)]
            await send({"type": "http.response.body", "body": _chunk(choices), "more_body": True})
            await asyncio.sleep(self.delay)
        final = [{"index": c, "delta": {}, "finish_reason": "length"} for c in range(n)]
        tail = _chunk(final)
        if (request.get("stream_options") or {}).get("include_usage"):
            usage = {"prompt_tokens": 9, "completion_tokens": words * n, "total_tokens": 9 + words * n}
            tail += _chunk([], usage)
        await send({"type": "http.response.body", "body": tail + b"data: [DONE]\n\n"})
