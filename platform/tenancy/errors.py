"""The platform's one family of errors that carry an HTTP answer, and its one rendering.

Every domain refusal (a service's, the gateway's, a key's, a budget's) is a ServiceError or a
subclass: a message fit for the user, a machine-readable code, the parameter at fault, the HTTP
status, and headers to send (`Retry-After`, ...). Both API stacks render them with `render`, in the
OpenAI shape `{"error": {"message", "type", "param", "code"}}`: the management API's DRF
exception handler (tenancy.api.errors) and the gateway (/v1). A domain error that escapes a view
is therefore an answer with its status, never a 500.
"""

from __future__ import annotations

_TYPES = {
    400: "invalid_request_error",
    401: "invalid_request_error",
    403: "permission_error",
    404: "invalid_request_error",
    405: "invalid_request_error",
    409: "conflict_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
}


class ServiceError(Exception):
    """A request the platform refuses. `code` is machine-readable; `status` the HTTP status."""

    status = 400
    error_type: str | None = None  # None: derived from the status

    def __init__(
        self,
        message: str,
        code: str = "invalid_request",
        param: str | None = None,
        *,
        status: int | None = None,
        error_type: str | None = None,
        headers: dict | None = None,
    ):
        super().__init__(message)
        self.message, self.code, self.param = message, code, param
        if status is not None:
            self.status = status
        if error_type is not None:
            self.error_type = error_type
        self.headers = dict(headers or {})


class Forbidden(ServiceError):
    status = 403


class NotFound(ServiceError):
    status = 404


class Conflict(ServiceError):
    status = 409


class TooManyRequests(ServiceError):
    status = 429

    def __init__(self, message: str, code: str = "rate_limited", param: str | None = None, *, retry_after: int, **kw):
        super().__init__(message, code, param, **kw)
        self.headers.setdefault("Retry-After", str(int(retry_after)))


class Unavailable(ServiceError):
    status = 503
    error_type = "server_error"

    def __init__(self, message: str, code: str = "unavailable", param: str | None = None, *, retry_after: int, **kw):
        super().__init__(message, code, param, **kw)
        self.headers.setdefault("Retry-After", str(int(retry_after)))


def error_body(
    message: str,
    *,
    status_code: int,
    code: str | None = None,
    param: str | None = None,
    error_type: str | None = None,
    details=None,
) -> dict:
    error = {
        "message": message,
        "type": error_type
        or _TYPES.get(status_code, "server_error" if status_code >= 500 else "invalid_request_error"),
        "param": param,
        "code": code,
    }
    if details is not None:
        error["details"] = details
    return {"error": error}


def render(error: ServiceError) -> tuple[dict, int, dict]:
    """The answer to an error: its body, status and headers."""
    body = error_body(
        error.message, status_code=error.status, code=error.code, param=error.param, error_type=error.error_type
    )
    return body, error.status, error.headers
