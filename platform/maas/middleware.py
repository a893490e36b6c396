"""Request ids: every response carries `x-request-id`; the usage ledger keys on it later."""

from __future__ import annotations

import re
import uuid

from asgiref.sync import iscoroutinefunction, markcoroutinefunction

# A caller-chosen id is kept only if it is short and plain, so it cannot inject into logs.
_VALID = re.compile(r"^[A-Za-z0-9._\-]{8,128}$")


def request_id_for(request) -> str:
    incoming = request.headers.get("x-request-id", "")
    return incoming if _VALID.match(incoming) else f"req_{uuid.uuid4().hex}"


class RequestIdMiddleware:
    sync_capable = True
    async_capable = True

    def __init__(self, get_response):
        self.get_response = get_response
        if iscoroutinefunction(get_response):
            markcoroutinefunction(self)

    def __call__(self, request):
        if iscoroutinefunction(self):
            return self._acall(request)
        request.request_id = request_id_for(request)
        response = self.get_response(request)
        response["x-request-id"] = request.request_id
        return response

    async def _acall(self, request):
        request.request_id = request_id_for(request)
        response = await self.get_response(request)
        response["x-request-id"] = request.request_id
        return response
