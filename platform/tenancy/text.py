"""User-given names and labels (of keys, endpoints, organizations, datasets, people): one line of
printable text. A control character (a newline, say) in a name that reaches an email header or a
log line would break it, so one is refused where the name is given, with the field it is in."""

from __future__ import annotations

import unicodedata

from tenancy.errors import ServiceError


def name(value, *, param: str = "name", what: str = "A name", max_length: int = 100, required: bool = True) -> str:
    text = str(value or "").strip()
    if required and not text:
        raise ServiceError(f"{what} needs 1 to {max_length} characters.", "invalid_name", param)
    if len(text) > max_length:
        raise ServiceError(f"{what} has at most {max_length} characters (got {len(text)}).", "invalid_name", param)
    bad = next((c for c in text if unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp")), None)
    if bad is not None:
        raise ServiceError(
            f"{what} must be one line of printable text: it contains the control character U+{ord(bad):04X}.",
            "invalid_name",
            param,
        )
    return text
