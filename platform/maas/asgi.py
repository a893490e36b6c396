"""ASGI entry point (uvicorn): the console, the management API, the OpenAI-compatible gateway,
and static files, behind the request-body limits of maas.body_limits.

Static files are answered here by Starlette's StaticFiles, from the static folders of the
packages in STATIC_PACKAGES, before Django is involved. /v1/ goes to Django through a handler
with a minimal async middleware chain (maas.gateway_handler); everything else through the full
stack.
"""

import os
import sys
from pathlib import Path

_here = Path(__file__).resolve()
sys.path[:0] = [p for p in (str(_here.parents[1]), str(_here.parents[2])) if p not in sys.path]
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "maas.settings")

from django.conf import settings  # noqa: E402
from django.core.asgi import get_asgi_application  # noqa: E402
from starlette.exceptions import HTTPException  # noqa: E402
from starlette.responses import PlainTextResponse  # noqa: E402
from starlette.staticfiles import StaticFiles  # noqa: E402

django_application = get_asgi_application()

from maas.body_limits import BodyLimitMiddleware  # noqa: E402  (after Django is set up)
from maas.gateway_handler import GatewayASGIHandler  # noqa: E402
from maas.lifespan import lifespan  # noqa: E402

gateway_application = GatewayASGIHandler()
_static_prefix = "/" + settings.STATIC_URL.strip("/") + "/"
_static = StaticFiles(packages=[(package, "static") for package in settings.STATIC_PACKAGES])


async def route(scope, receive, send):
    if scope["type"] == "lifespan":
        return await lifespan(receive, send)
    if scope["type"] == "http" and scope["path"].startswith(_static_prefix):
        scope = {**scope, "path": scope["path"][len(_static_prefix) - 1 :], "root_path": ""}
        try:
            return await _static(scope, receive, send)
        except HTTPException as error:
            return await PlainTextResponse(error.detail, status_code=error.status_code)(scope, receive, send)
    if scope["type"] == "http" and scope["path"].startswith("/v1/"):
        return await gateway_application(scope, receive, send)
    return await django_application(scope, receive, send)


# Every body is bounded before Django (or anything else) reads it.
application = BodyLimitMiddleware(route)
