from __future__ import annotations

import re

from pydantic import ValidationError
from pydantic_core import PydanticCustomError


class ProtocolError(ValueError):
    """A request that does not follow the protocol: a 400 naming the parameter (dotted, with
    indexes: `input.3`)."""

    def __init__(self, message: str, param: str | None = None, code: str = "invalid_value"):
        super().__init__(message)
        self.message, self.param, self.code = message, param, code


def param_of(location: tuple) -> str | None:
    """The parameter as errors name it: dotted, indexes included (`messages.0.content`)."""
    return ".".join(str(part) for part in location) or None


# pydantic names the member of a union it tried in the location (`input.str`, `input.list[...]`):
# those are not parameters.
UNION_MEMBER = re.compile(r"^(str|int|float|bool|none|<.*>|.*\[.*\]|constrained-.*|function-.*|json-or-python.*)$")


def _location(error: dict) -> tuple:
    return tuple(part for part in error.get("loc") or () if not (isinstance(part, str) and UNION_MEMBER.match(part)))


def missing(field: str) -> PydanticCustomError:
    """What a model validator raises for a field that its other fields make required."""
    return PydanticCustomError("missing_field", "Field required", {"field": field})


def from_validation(error: ValidationError) -> ProtocolError:
    """pydantic's most specific complaint, in OpenAI's words: what is wrong and with which
    parameter (for a union, the member that got furthest)."""
    errors = error.errors(include_url=False)
    first = max(errors, key=lambda e: len(_location(e)))
    location = _location(first)
    if first["type"] == "missing_field":
        location, first = (*location, first["ctx"]["field"]), {**first, "type": "missing"}
    param = param_of(location)
    if first["type"] == "extra_forbidden":
        return ProtocolError(f"Unrecognized request argument supplied: {param}", param, "unknown_parameter")
    if first["type"] == "missing":
        return ProtocolError(f"Missing required parameter: '{param}'.", param, "missing_required_parameter")
    message = first["msg"]
    if message.startswith("Value error, "):
        message = message[len("Value error, ") :]
    return ProtocolError(f"Invalid '{param}': {message}" if param else message, param)
