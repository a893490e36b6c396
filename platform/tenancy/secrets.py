"""Making and hashing bearer secrets (API keys, invitation tokens).

SHA-256, not a password hasher: these secrets carry 256 random bits, so a slow hash buys nothing
and would cost milliseconds on every API call.
"""

from __future__ import annotations

import hashlib
import secrets

API_KEY_PREFIX = "sk-"
API_KEY_RANDOM_BYTES = 32
VISIBLE_PREFIX_LENGTH = 10  # "sk-" and 7 random characters


def new_api_key() -> str:
    return API_KEY_PREFIX + secrets.token_urlsafe(API_KEY_RANDOM_BYTES)


def new_token() -> str:
    return secrets.token_urlsafe(32)


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def visible_prefix(key: str) -> str:
    return key[:VISIBLE_PREFIX_LENGTH]


def looks_like_api_key(value: str) -> bool:
    # token_urlsafe(32) is 43 characters; accept anything plausible and let the lookup decide.
    return value.startswith(API_KEY_PREFIX) and 20 <= len(value) <= 200 and value.isascii()
