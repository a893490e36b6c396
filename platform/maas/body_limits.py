"""Request bodies are bounded before anything reads them (and URLs with a NUL are refused).

Django's ASGI handler reads the whole body into a spooled temporary file before routing,
authentication or any size check, so without this layer one anonymous chunked request could fill
the disk. In front of everything, this layer

- answers 413 at once when `Content-Length` is over the route's limit;
- counts the bytes of a body as they are received, and when they pass the limit tells the
  application that the client went away (Django then stops reading and answers nothing) and
  answers 413 itself, closing the connection so the rest of the body is never read;
- refuses an upload whose caller is not authenticated before reading its body: a Bearer key is
  checked against the key store, a session cookie against the session store.

Limits: FILE_UPLOAD_MAX_BYTES (plus room for the multipart framing) on the file-upload routes,
REQUEST_BODY_MAX_BYTES everywhere else — below Django's in-memory spooling threshold, so an
ordinary request never touches the disk.
"""

from __future__ import annotations

import re
import uuid

import orjson
from django.conf import settings
from django.http import parse_cookie

from tenancy import keyauth
from tenancy.errors import error_body
from tenancy.roles import Scope

# The routes that take a file: the API's /v1/files and the console's upload form.
UPLOAD_ROUTES = re.compile(r"^/(v1/files|orgs/[a-z0-9-]+/data/?)$")
MULTIPART_ROOM = 64 * 1024  # boundaries and part headers around the file itself


class BodyLimitMiddleware:
    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        if "\x00" in scope["path"] or b"%00" in scope["query_string"].lower() or b"\x00" in scope["query_string"]:
            # No identifier or filter of the platform can hold a NUL, and PostgreSQL refuses one in
            # any text: refused here, for every route, rather than as a database error.
            return await _reply(scope, send, 400, "The URL contains a NUL character.", "invalid_url")
        upload = scope["method"] == "POST" and bool(UPLOAD_ROUTES.match(scope["path"]))
        limit = settings.FILE_UPLOAD_MAX_BYTES + MULTIPART_ROOM if upload else settings.REQUEST_BODY_MAX_BYTES
        headers = dict(scope["headers"])
        declared = _content_length(headers)
        if declared is not None and declared > limit:
            return await _too_large(scope, send, limit, upload)
        if upload and not await _may_upload(scope, headers, send):
            return None

        received, exceeded, started = 0, False, False

        async def counted_receive():
            nonlocal received, exceeded
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    exceeded = True
                    return {"type": "http.disconnect"}
            return message

        async def tracked_send(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        await self.app(scope, counted_receive, tracked_send)
        if exceeded and not started:
            await _too_large(scope, send, limit, upload)
        return None


def _content_length(headers: dict) -> int | None:
    try:
        return int(headers[b"content-length"])
    except (KeyError, ValueError):
        return None


def _size(limit: int) -> str:
    return f"{limit / (1 << 20):g} MiB" if limit >= 1 << 20 else f"{limit} bytes"


async def _too_large(scope, send, limit: int, upload: bool) -> None:
    if upload:
        message = f"The file is too large: uploads are limited to {_size(settings.FILE_UPLOAD_MAX_BYTES)}."
        code = "file_too_large"
    else:
        message = f"The request body is too large: the limit is {_size(limit)}."
        code = "request_too_large"
    await _reply(scope, send, 413, message, code)


async def _may_upload(scope, headers: dict, send) -> bool:
    """Whether an upload's caller is authenticated; if not, the refusal has been sent."""
    authorization = headers.get(b"authorization")
    if authorization is not None:
        try:
            principal = await keyauth.aauthenticate(keyauth.bearer_token(authorization.decode("latin-1")))
        except keyauth.KeyRejected as rejected:
            await _reply(scope, send, rejected.status, rejected.message, rejected.code, rejected.error_type)
            return False
        if principal.allows(Scope.FILES):
            return True
        await _reply(
            scope,
            send,
            403,
            f"This API key lacks the scope for this call; it needs {Scope.FILES}.",
            "insufficient_scope",
            "permission_error",
        )
        return False
    if not scope["path"].startswith("/v1/") and await _signed_in(headers):
        return True  # the console's form: the view checks the member's role and the CSRF token
    await _reply(
        scope,
        send,
        401,
        "You didn't provide an API key. Send it in the Authorization header as 'Bearer sk-...'.",
        "missing_api_key",
    )
    return False


async def _signed_in(headers: dict) -> bool:
    from importlib import import_module

    cookies = parse_cookie(headers.get(b"cookie", b"").decode("latin-1"))
    session_key = cookies.get(settings.SESSION_COOKIE_NAME)
    if not session_key:
        return False
    store = import_module(settings.SESSION_ENGINE).SessionStore(session_key)
    return await store.aget("_auth_user_id") is not None


async def _reply(scope, send, status: int, message: str, code: str, error_type: str | None = None) -> None:
    body = orjson.dumps(error_body(message, status_code=status, code=code, error_type=error_type))
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"x-request-id", f"req_{uuid.uuid4().hex}".encode()),
                # The rest of an unread body is not worth reading: close instead of keeping alive.
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
