"""Request ids: every response carries a server-generated `x-request-id` (the usage ledger is
unique on it, so a caller must not be able to choose it). A caller's own id, sent as
`x-client-request-id`, is echoed back when it is short and plain."""

from __future__ import annotations

import re
import uuid

from asgiref.sync import iscoroutinefunction, markcoroutinefunction

_PLAIN = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")


def _stamp(request) -> None:
    request.request_id = f"req_{uuid.uuid4().hex}"
    client_id = request.headers.get("x-client-request-id", "")
    request.client_request_id = client_id if _PLAIN.match(client_id) else None


def _label(request, response):
    response["x-request-id"] = request.request_id
    if request.client_request_id:
        response["x-client-request-id"] = request.client_request_id
    return response


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
        _stamp(request)
        return _label(request, self.get_response(request))

    async def _acall(self, request):
        _stamp(request)
        return _label(request, await self.get_response(request))
