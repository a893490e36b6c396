"""User-given names and labels (of keys, endpoints, organizations, datasets, people): one line of
printable text. A control character (a newline, say) in a name that reaches an email header or a
log line would break it, so one is refused where the name is given, with the field it is in."""

from __future__ import annotations

import functools
import unicodedata

from tenancy.errors import ServiceError

REFUSED_CATEGORIES = ("Cc", "Cf", "Zl", "Zp")


@functools.cache
def one_line_pattern() -> str:
    """The regular expression (for the API document, in the ECMA dialect schema tools read) of the
    names `name` takes: no character of REFUSED_CATEGORIES in the Basic Multilingual Plane, as
    ranges (the few format characters beyond it are refused all the same)."""
    ranges, start = [], None
    for point in range(0x10001):
        refused = point <= 0xFFFF and unicodedata.category(chr(point)) in REFUSED_CATEGORIES
        if refused and start is None:
            start = point
        elif not refused and start is not None:
            ranges.append((start, point - 1))
            start = None
    spans = "".join(f"\\u{a:04x}" if a == b else f"\\u{a:04x}-\\u{b:04x}" for a, b in ranges)
    return f"^[^{spans}]*$"


def name(value, *, param: str = "name", what: str = "A name", max_length: int = 100, required: bool = True) -> str:
    text = str(value or "").strip()
    if required and not text:
        raise ServiceError(f"{what} needs 1 to {max_length} characters.", "invalid_name", param)
    if len(text) > max_length:
        raise ServiceError(f"{what} has at most {max_length} characters (got {len(text)}).", "invalid_name", param)
    bad = next((c for c in text if unicodedata.category(c) in REFUSED_CATEGORIES), None)
    if bad is not None:
        raise ServiceError(
            f"{what} must be one line of printable text: it contains the control character U+{ord(bad):04X}.",
            "invalid_name",
            param,
        )
    return text
