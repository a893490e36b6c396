"""Database work from async code that belongs to no request: a sync function run on a worker
thread (not thread-sensitive: the request and its executor may be gone), which opens and closes
its connection as a request would, so that with a connection pool the connection goes back."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TypeVar

from asgiref.sync import sync_to_async
from django.db import close_old_connections, connection

T = TypeVar("T")


def _with_connection(work: Callable[[], T]) -> T:
    close_old_connections()
    try:
        return work()
    finally:
        close_old_connections()


async def run_detached(function: Callable[..., T], *args, **kwargs) -> T:
    return await sync_to_async(_with_connection, thread_sensitive=False)(functools.partial(function, *args, **kwargs))


def returning_connection(function: Callable[..., T]) -> Callable[..., T]:
    """For a sync function an async view runs on its request's thread (thread-sensitive, so it sees
    what the request's caller sees): give the connection back as soon as it returns, instead of when
    the request ends (a streamed answer may last minutes, holding a pooled connection all along).
    Inside a transaction (the tests' test client) the connection stays."""

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        try:
            return function(*args, **kwargs)
        finally:
            if not connection.in_atomic_block:
                connection.close()

    return wrapper


async def on_request_thread(function: Callable[..., T], *args, **kwargs) -> T:
    """A short database call of an async view, on its request's thread (so it sees, and joins,
    what the caller sees: a test client's transaction too), its connection given back after."""
    return await sync_to_async(returning_connection(function))(*args, **kwargs)
