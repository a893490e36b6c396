"""The gateway's reservation on PostgreSQL without leaving the event loop.

The common case — a budget applies, no key limit — is one statement (budgets.hold_statement).
Sent through Django it costs a worker-thread hop and Django's connection handling around one round
trip; here it goes from the event loop over a small pool of psycopg async connections of this
process, as a prepared statement. Anything else (a refusal to explain, a key limit, SQLite) takes
the synchronous path, which says why and creates a missing account.
"""

from __future__ import annotations

import asyncio

import psycopg
from django.conf import settings
from django.db import DatabaseError
from psycopg.conninfo import make_conninfo
from psycopg_pool import AsyncConnectionPool

from billing import budgets

_pools: dict[asyncio.AbstractEventLoop, AsyncConnectionPool] = {}
# What psycopg takes from Django's OPTIONS (sslmode and the like); Django's own keys stay out.
_DJANGO_ONLY = {"pool", "server_side_binding", "isolation_level", "assume_role", "options"}


def _conninfo() -> str:
    db = settings.DATABASES["default"]
    extra = {k: v for k, v in db.get("OPTIONS", {}).items() if k not in _DJANGO_ONLY}
    parts = {"dbname": db["NAME"], "user": db["USER"], "password": db["PASSWORD"], "host": db["HOST"]}
    parts["port"] = str(db["PORT"]) if db["PORT"] else ""
    return make_conninfo(**{k: v for k, v in {**parts, **extra}.items() if v})


async def _pool() -> AsyncConnectionPool:
    loop = asyncio.get_running_loop()
    pool = _pools.get(loop)
    if pool is None:
        pool = AsyncConnectionPool(
            _conninfo(),
            min_size=1,
            max_size=settings.BILLING_RESERVE_POOL_SIZE,
            timeout=settings.BILLING_RESERVE_POOL_TIMEOUT,
            reconnect_timeout=settings.DB_POOL_RECONNECT_SECONDS,
            kwargs={"autocommit": True, "prepare_threshold": 0},
            open=False,
        )
        _pools[loop] = pool
        await pool.open()
    return pool


_started: set[asyncio.AbstractEventLoop] = set()


def start() -> None:
    """Called by the web process's lifespan on its event loop (which also closes the pool): only
    there, so that short-lived loops (a test client's) never open pools they would not close."""
    if settings.BILLING_ASYNC_RESERVE and settings.DATABASES["default"]["ENGINE"].endswith("postgresql"):
        _started.add(asyncio.get_running_loop())


def active() -> bool:
    try:
        return asyncio.get_running_loop() in _started
    except RuntimeError:
        return False


async def hold(request_id: str, organization_id: int, api_key_id: str | None, amount: int) -> bool:
    """Whether the reservation was made (False: refused, or the account does not exist yet).
    A database that cannot be reached raises DatabaseError, as Django would."""
    sql, params = budgets.hold_statement(
        request_id, organization_id, api_key_id, amount, settings.BILLING_RESERVATION_TTL_SECONDS
    )
    try:
        pool = await _pool()
        async with pool.connection() as conn:
            cursor = await conn.execute(sql, params)
            return await cursor.fetchone() is not None
    except psycopg.Error as error:
        raise DatabaseError(str(error)) from error


async def close() -> None:
    loop = asyncio.get_running_loop()
    _started.discard(loop)
    pool = _pools.pop(loop, None)
    if pool is not None:
        await pool.close()
