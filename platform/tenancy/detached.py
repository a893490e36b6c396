"""Database work from async code that belongs to no request: a sync function run on a worker
thread (not thread-sensitive: the request and its executor may be gone), which opens and closes
its connection as a request would, so that with a connection pool the connection goes back."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TypeVar

from asgiref.sync import sync_to_async
from django.db import close_old_connections

T = TypeVar("T")


def _with_connection(work: Callable[[], T]) -> T:
    close_old_connections()
    try:
        return work()
    finally:
        close_old_connections()


async def run_detached(function: Callable[..., T], *args, **kwargs) -> T:
    return await sync_to_async(_with_connection, thread_sensitive=False)(functools.partial(function, *args, **kwargs))
