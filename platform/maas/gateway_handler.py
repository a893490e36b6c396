"""A Django ASGI handler for the OpenAI-compatible gateway (/v1/) with a minimal middleware chain.

Django's built-in middleware (sessions, CSRF, messages, auth, security headers) runs its hooks
through sync_to_async under ASGI: about fourteen thread hops per request, for features an
API-key endpoint never uses. The gateway's chain is only the (natively async) request-id
middleware; the console, the management API and the back office keep the full stack.

Whatever escapes a /v1/ view becomes an OpenAI error body, never Django's HTML error page.
"""

import logging

from django.core.exceptions import BadRequest, PermissionDenied, RequestDataTooBig, SuspiciousOperation
from django.core.handlers.asgi import ASGIHandler
from django.core.handlers.exception import convert_exception_to_response
from django.http import Http404, JsonResponse

from maas.middleware import RequestIdMiddleware
from tenancy.errors import ServiceError, error_body, render

log = logging.getLogger("serving.gateway")
_KNOWN = (
    (RequestDataTooBig, 413, "The request body is too large.", "request_too_large"),
    (Http404, 404, "Not found.", "not_found"),
    (PermissionDenied, 403, "You may not do this.", "permission_denied"),
    ((BadRequest, SuspiciousOperation), 400, "The request is malformed.", "bad_request"),
)


def openai_errors(get_response):
    async def handle(request):
        try:
            return await get_response(request)
        except ServiceError as error:
            body, status, headers = render(error)
            response = JsonResponse(body, status=status)
            for name, value in headers.items():
                response[name] = value
            return response
        except Exception as error:
            known = next((rest for kinds, *rest in _KNOWN if isinstance(error, kinds)), None)
            if known is None:
                log.exception("unhandled error on %s %s", request.method, request.path)
                known = (500, "The server had an error while processing your request.", "internal_error")
            status, message, code = known
            return JsonResponse(error_body(message, status_code=status, code=code), status=status)

    return handle


class GatewayASGIHandler(ASGIHandler):
    def load_middleware(self, is_async=False):
        self._view_middleware = []
        self._template_response_middleware = []
        self._exception_middleware = []
        get_response = self._get_response_async if is_async else self._get_response
        handler = convert_exception_to_response(get_response)
        if is_async:
            handler = openai_errors(get_response)
        self._middleware_chain = convert_exception_to_response(RequestIdMiddleware(handler))
