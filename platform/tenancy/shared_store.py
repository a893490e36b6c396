"""The shared store that every web process sees: Redis when REDIS_URL is set, else Django's
cache (the embedded default's file cache, shared by the processes of one machine).

The gateway's hot path reads it natively async (redis.asyncio), so authenticating a request
costs one Redis round trip and no thread hop. Values are JSON.
"""

from __future__ import annotations

import asyncio
import json
import threading

from django.conf import settings
from django.core.cache import cache

from tenancy.errors import Unavailable

_sync_client = None
_async_clients: dict[int, object] = {}


class StoreUnavailable(Unavailable):
    """Redis cannot be reached (restarting, say): what needs it — key lookups, rate limits,
    throttles — answers 503 with Retry-After, never a 500, and never serves without it."""

    def __init__(self):
        message = "A service the platform needs is unavailable for a moment; retry shortly."
        super().__init__(message, "store_unavailable", retry_after=2)


def guarded(function):
    """Redis' connection failures and timeouts, raised as StoreUnavailable (sync or async)."""
    import functools
    import inspect

    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import TimeoutError as RedisTimeoutError

    failures = (RedisConnectionError, RedisTimeoutError)
    if inspect.iscoroutinefunction(function):

        @functools.wraps(function)
        async def run_async(*args, **kwargs):
            try:
                return await function(*args, **kwargs)
            except failures:
                raise StoreUnavailable() from None

        return run_async

    @functools.wraps(function)
    def run(*args, **kwargs):
        try:
            return function(*args, **kwargs)
        except failures:
            raise StoreUnavailable() from None

    return run


def prefix(key: str) -> str:
    return f"{settings.CACHES['default'].get('KEY_PREFIX', 'maas')}:{key}"


def redis_enabled() -> bool:
    return bool(settings.REDIS_URL)


def sync_client():
    global _sync_client
    if _sync_client is None:
        import redis

        pool = redis.BlockingConnectionPool.from_url(
            settings.REDIS_URL, max_connections=settings.REDIS_MAX_CONNECTIONS, timeout=settings.REDIS_POOL_TIMEOUT
        )
        _sync_client = redis.Redis(connection_pool=pool)
    return _sync_client


def async_client():
    """One client per event loop (a client is bound to the loop it was created on)."""
    import redis.asyncio

    loop = id(asyncio.get_running_loop())
    if loop not in _async_clients:
        # A burst of requests waits for a connection (up to REDIS_POOL_TIMEOUT) instead of failing.
        pool = redis.asyncio.BlockingConnectionPool.from_url(
            settings.REDIS_URL, max_connections=settings.REDIS_MAX_CONNECTIONS, timeout=settings.REDIS_POOL_TIMEOUT
        )
        _async_clients[loop] = redis.asyncio.Redis(connection_pool=pool)
    return _async_clients[loop]


@guarded
def get(key: str):
    if redis_enabled():
        raw = sync_client().get(prefix(key))
        return None if raw is None else json.loads(raw)
    return cache.get(key)


@guarded
def add(key: str, value, ttl: int) -> bool:
    """Set only if absent; True if this call set it."""
    if redis_enabled():
        return bool(sync_client().set(prefix(key), json.dumps(value), nx=True, ex=ttl))
    return cache.add(key, value, ttl)


@guarded
def set_many(values: dict, ttl: int) -> None:
    if redis_enabled():
        pipe = sync_client().pipeline()
        for key, value in values.items():
            pipe.set(prefix(key), json.dumps(value), ex=ttl)
        pipe.execute()
    else:
        cache.set_many(values, ttl)


@guarded
async def aget_and_add(get_key: str, add_key: str, ttl: int):
    """Read one key and set another if absent, in one round trip: (value, whether it was set)."""
    if redis_enabled():
        pipe = async_client().pipeline(transaction=False)
        pipe.get(prefix(get_key))
        pipe.set(prefix(add_key), "1", nx=True, ex=ttl)
        raw, added = await pipe.execute()
        return (None if raw is None else json.loads(raw)), bool(added)
    return cache.get(get_key), cache.add(add_key, 1, ttl)


# Without Redis the embedded default runs one web process: a lock of the process makes its
# counters atomic.
_counting = threading.Lock()


@guarded
def hit(key: str, ttl: int) -> int:
    """Add one to a counter that expires ttl seconds after its first hit; the new count."""
    if redis_enabled():
        pipe = sync_client().pipeline()
        pipe.incr(prefix(key))
        pipe.expire(prefix(key), ttl, nx=True)
        count, _ = pipe.execute()
        return int(count)
    with _counting:  # the local cache's incr is a read and a write: one counter change at a time
        if cache.add(key, 1, ttl):
            return 1
        try:
            return cache.incr(key)
        except ValueError:  # expired between the two calls
            cache.add(key, 1, ttl)
            return 1


@guarded
def unhit(key: str) -> None:
    """Take one back from a counter (never below 0; a missing counter stays missing)."""
    if redis_enabled():
        sync_client().eval(
            "local n = tonumber(redis.call('GET', KEYS[1]) or '0') if n > 0 then redis.call('DECR', KEYS[1]) end",
            1,
            prefix(key),
        )
        return
    with _counting:
        try:
            if cache.decr(key) < 0:
                cache.incr(key)
        except ValueError:  # not there
            pass


@guarded
def count(key: str) -> int:
    return int(get(key) or 0)


@guarded
def forget(key: str) -> None:
    if redis_enabled():
        sync_client().delete(prefix(key))
    else:
        cache.delete(key)
