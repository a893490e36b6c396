"""Requests-per-minute and tokens-per-minute limits per API key, per organization and per
published endpoint.

Counters live in one shared store so that every web process enforces the same limit: Redis when
REDIS_URL is set (one Lua script checks and increments all four counters atomically, so a
rejected request consumes nothing and concurrent requests cannot overshoot), otherwise an
in-process table — right for the embedded default, which runs one web process.

Windows are fixed minutes. A request reserves its estimated tokens (prompt estimate plus the
completion cap the gateway sends upstream, so the model cannot generate more) when it starts. A
stream that outlives its minute carries what is left of its reservation into each new minute it
generates in, so tokens count in the window that uses them; at the end the reservation is
corrected to the real count. Every counter key always has a TTL: corrections create none without.
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass

from django.conf import settings

from serving.gateway.http import GatewayError
from tenancy import shared_store

WINDOW = 60

_SCRIPT = """
local n = #KEYS
for i = 1, n do
  local current = tonumber(redis.call('GET', KEYS[i]) or '0')
  if current + tonumber(ARGV[1 + i]) > tonumber(ARGV[1 + n + i]) then
    return {i, current}
  end
end
local values = {0}
for i = 1, n do
  values[i + 1] = redis.call('INCRBY', KEYS[i], ARGV[1 + i])
  redis.call('EXPIRE', KEYS[i], ARGV[1])
end
return values
"""


@dataclass(frozen=True)
class Counter:
    scope: str  # "API key" | "organization" | "endpoint"
    unit: str  # "requests" | "tokens"
    name: str  # the counter's key without its window
    limit: int
    amount: int


def window_now() -> int:
    return int(time.time() // WINDOW)


def _key(window: int, name: str) -> str:
    return shared_store.prefix(f"rl:{window}:{name}")


@dataclass
class Grant:
    counters: list[Counter]
    used: list[int]
    reset_seconds: float
    window: int  # where the request's token reservation sits now
    reserved: int = 0  # tokens of the reservation in that window
    settled: int = 0  # tokens already counted in earlier windows

    def headers(self) -> dict[str, str]:
        headers = {}
        for unit in ("requests", "tokens"):
            mine = [(c, u) for c, u in zip(self.counters, self.used, strict=True) if c.unit == unit]
            if not mine:
                continue
            counter, used = min(mine, key=lambda pair: pair[0].limit - pair[1])
            headers[f"x-ratelimit-limit-{unit}"] = str(counter.limit)
            headers[f"x-ratelimit-remaining-{unit}"] = str(max(0, counter.limit - used))
            headers[f"x-ratelimit-reset-{unit}"] = f"{math.ceil(self.reset_seconds)}s"
        return headers

    def _token_names(self) -> list[str]:
        return [c.name for c in self.counters if c.unit == "tokens"]

    def carry_over(self, used_so_far: int) -> list[tuple[str, int]]:
        """The counter changes that move this request's reservation into the current minute, if it
        has moved on: the old minute keeps what was used in it, the new one gets what is left."""
        now = window_now()
        if now == self.window:
            return []
        estimate = max((c.amount for c in self.counters if c.unit == "tokens"), default=0)
        used_here = max(0, used_so_far - self.settled)
        left = max(0, estimate - used_so_far)
        changes = [(_key(self.window, n), used_here - self.reserved) for n in self._token_names()]
        changes += [(_key(now, n), left) for n in self._token_names()]
        self.window, self.reserved, self.settled = now, left, max(used_so_far, self.settled)
        return [(k, d) for k, d in changes if d]

    def final(self, actual: int) -> list[tuple[str, int]]:
        """The counter changes that replace the reservation by the real count."""
        changes = self.carry_over(actual)
        delta = max(0, actual - self.settled) - self.reserved
        self.reserved = max(0, actual - self.settled)
        return changes + ([(_key(self.window, n), delta) for n in self._token_names()] if delta else [])


_LIMITED = [  # (scope shown in messages, unit, principal attribute = settings key, counter key prefix)
    ("API key", "requests", "key_rpm", "k"),
    ("API key", "tokens", "key_tpm", "k"),
    ("organization", "requests", "org_rpm", "o"),
    ("organization", "tokens", "org_tpm", "o"),
]


def _limits(principal) -> dict[tuple[str, str], tuple[str, int]]:
    """Each counter's key and limit: the override on the key or organization, else the default."""
    owner = {"k": principal.key_id, "o": principal.organization_id}
    limits = {}
    for scope, unit, name, kind in _LIMITED:
        override = getattr(principal, name)
        limits[(scope, unit)] = (
            f"{kind}:{owner[kind]}:{unit[0]}",
            override if override is not None else settings.RATE_LIMITS[name],
        )
    return limits


class _LocalStore:
    def __init__(self):
        self._lock = threading.Lock()
        self._values: dict[str, tuple[int, float]] = {}

    async def check_and_add(self, keys: list[str], amounts: list[int], limits: list[int]) -> tuple[int, list[int]]:
        now = time.time()
        with self._lock:
            current = [self._values.get(k, (0, 0.0)) for k in keys]
            current = [value if expires > now else 0 for value, expires in current]
            for i, (value, amount, limit) in enumerate(zip(current, amounts, limits, strict=True)):
                if value + amount > limit:
                    return i + 1, [value]
            for key, value, amount in zip(keys, current, amounts, strict=True):
                self._values[key] = (value + amount, now + WINDOW * 2)
            if len(self._values) > 100_000:
                self._values = {k: v for k, v in self._values.items() if v[1] > now}
            return 0, [v + a for v, a in zip(current, amounts, strict=True)]

    async def add(self, changes: list[tuple[str, int]]) -> None:
        with self._lock:
            for key, amount in changes:
                value, expires = self._values.get(key, (0, time.time() + WINDOW * 2))
                self._values[key] = (max(0, value + amount), expires)


# Add to a counter and make sure it expires, even when the add created it.
_ADD = """
for i = 1, #KEYS do
  local value = redis.call('INCRBY', KEYS[i], ARGV[1 + i])
  if value < 0 then redis.call('SET', KEYS[i], 0) end
  if redis.call('TTL', KEYS[i]) < 0 then redis.call('EXPIRE', KEYS[i], ARGV[1]) end
end
return 0
"""


class _RedisStore:
    @shared_store.guarded
    async def check_and_add(self, keys: list[str], amounts: list[int], limits: list[int]) -> tuple[int, list[int]]:
        result = await shared_store.async_client().eval(_SCRIPT, len(keys), *keys, WINDOW * 2, *amounts, *limits)
        return int(result[0]), [int(v) for v in result[1:]]

    @shared_store.guarded
    async def add(self, changes: list[tuple[str, int]]) -> None:
        keys, amounts = [k for k, _ in changes], [a for _, a in changes]
        await shared_store.async_client().eval(_ADD, len(keys), *keys, WINDOW * 2, *amounts)


_store = None


def store():
    global _store
    if _store is None:
        _store = _RedisStore() if shared_store.redis_enabled() else _LocalStore()
    return _store


def _route_limits(endpoint) -> dict[tuple[str, str], tuple[str, int]]:
    """An endpoint's own limits, counted across every key that calls it."""
    limits = {}
    if endpoint is not None:
        for unit, limit in (("requests", endpoint.rpm_limit), ("tokens", endpoint.tpm_limit)):
            if limit is not None:
                limits[("endpoint", unit)] = (f"e:{endpoint.id}:{unit[0]}", limit)
    return limits


async def acquire(principal, estimated_tokens: int, endpoint=None) -> Grant:
    """Check and count the key's, the organization's and (for a published endpoint) the endpoint's
    counters in one atomic step."""
    now = time.time()
    window = int(now // WINDOW)
    reset = WINDOW - (now % WINDOW)
    counters = [
        Counter(scope, unit, key, limit, 1 if unit == "requests" else estimated_tokens)
        for (scope, unit), (key, limit) in {**_limits(principal), **_route_limits(endpoint)}.items()
    ]
    violated, used = await store().check_and_add(
        [_key(window, c.name) for c in counters], [c.amount for c in counters], [c.limit for c in counters]
    )
    if violated:
        counter = counters[violated - 1]
        retry = max(1, math.ceil(reset))
        if counter.amount > counter.limit:
            message = (
                f"Request too large: it may use {counter.amount} tokens, above the limit of {counter.limit} "
                f"tokens per minute for this {counter.scope}. Lower max_tokens or the prompt."
            )
        else:
            message = (
                f"Rate limit reached for {counter.unit} per minute on this {counter.scope}: limit "
                f"{counter.limit}, used {used[0]}. Retry after {retry}s."
            )
        headers = {
            "retry-after": str(retry),
            "retry-after-ms": str(int(reset * 1000)),
            f"x-ratelimit-limit-{counter.unit}": str(counter.limit),
            f"x-ratelimit-remaining-{counter.unit}": str(max(0, counter.limit - used[0])),
            f"x-ratelimit-reset-{counter.unit}": f"{retry}s",
        }
        raise GatewayError(429, message, code="rate_limit_exceeded", error_type="rate_limit_error", headers=headers)
    return Grant(counters, used, reset, window, reserved=estimated_tokens)


async def apply(changes: list[tuple[str, int]]) -> None:
    if changes:
        await store().add(changes)


async def correct(grant: Grant, actual_tokens: int) -> None:
    """Replace the token reservation by the real count."""
    await apply(grant.final(actual_tokens))
