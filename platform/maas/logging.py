"""A logging filter that scrubs API keys, bearer tokens, invitation and password-reset tokens from records.

The code never logs key material on purpose; this is the second line of defence for what a
library might log (a request line, an exception with headers in it).
"""

from __future__ import annotations

import logging
import re

SECRET_PATTERNS = [
    re.compile(r"sk-[A-Za-z0-9_\-]{16,}"),
    re.compile(r"(?i)(bearer\s+)[^\s'\"]+"),
    re.compile(r"(?i)(/invitations/)[A-Za-z0-9_\-]{16,}"),
    re.compile(r"(?i)([?&]invitation=)[A-Za-z0-9_\-]{16,}"),
    # A password-reset link: /password-reset/<uid>/<token>/ (not the form's own sent/ and done/ pages).
    re.compile(r"(?i)(/password-reset/)(?!sent/|done/)[A-Za-z0-9_\-]+/[A-Za-z0-9_\-]+"),
]


def redact(text: str) -> str:
    for pattern in SECRET_PATTERNS:
        text = pattern.sub(lambda m: (m.group(1) if m.groups() else "") + "[REDACTED]", text)
    return text


class RedactSecretsFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        if record.exc_info and not record.exc_text:
            record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
        return True
