"""Talking to model servers: one pooled HTTP client per event loop, and the SSE event reader."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import httpx
from django.conf import settings

_clients: dict[int, httpx.AsyncClient] = {}


def client() -> httpx.AsyncClient:
    loop = id(asyncio.get_running_loop())
    if loop not in _clients:
        _clients[loop] = httpx.AsyncClient(
            timeout=httpx.Timeout(settings.GATEWAY_UPSTREAM_TIMEOUT, connect=3.0),
            limits=httpx.Limits(max_connections=512, max_keepalive_connections=128),
        )
    return _clients[loop]


# Failures before the first byte: another replica may be tried.
CONNECT_ERRORS = (httpx.ConnectError, httpx.ConnectTimeout)
# Failures once the answer is flowing: the client gets an error event.
STREAM_ERRORS = (httpx.ReadError, httpx.ReadTimeout, httpx.RemoteProtocolError)


async def events(response: httpx.Response) -> AsyncIterator[dict | str]:
    """Yield each SSE `data:` payload as a dict, and the string "[DONE]" at the end."""
    async for line in response.aiter_lines():
        if not line.startswith("data:"):
            continue
        data = line[5:].strip()
        if data == "[DONE]":
            yield "[DONE]"
            return
        try:
            payload = json.loads(data)
        except json.JSONDecodeError:
            payload = {
                "error": {
                    "message": "The model server sent a malformed event.",
                    "type": "server_error",
                    "param": None,
                    "code": "bad_upstream_event",
                }
            }
        yield payload
