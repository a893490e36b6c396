"""A Django ASGI handler for the OpenAI-compatible gateway (/v1/) with a minimal middleware chain.

Django's built-in middleware (sessions, CSRF, messages, auth, security headers) runs its hooks
through sync_to_async under ASGI: about fourteen thread hops per request, for features an
API-key endpoint never uses. The gateway's chain is only the (natively async) request-id
middleware; the console, the management API and the back office keep the full stack.
"""

from django.core.handlers.asgi import ASGIHandler
from django.core.handlers.exception import convert_exception_to_response

from maas.middleware import RequestIdMiddleware


class GatewayASGIHandler(ASGIHandler):
    def load_middleware(self, is_async=False):
        self._view_middleware = []
        self._template_response_middleware = []
        self._exception_middleware = []
        get_response = self._get_response_async if is_async else self._get_response
        handler = convert_exception_to_response(get_response)
        self._middleware_chain = convert_exception_to_response(RequestIdMiddleware(handler))
