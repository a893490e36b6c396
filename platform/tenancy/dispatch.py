"""Sending a Celery task by its name: a module sends the tasks of a layer above it (a state
machine's follow-up work, a pool's notice) without importing that layer, so no import circle
forms between a state machine and the tasks that drive it."""

from __future__ import annotations

import logging
from importlib import import_module

from celery import current_app

log = logging.getLogger("tenancy.dispatch")


def task(name: str):
    """The task registered as `name` (its module is imported now, so it is registered)."""
    import_module(name.rpartition(".")[0])
    return current_app.tasks[name]


def send(name: str, *args) -> None:
    """Send it; the broker being down is logged, not raised (call after the commit that made the
    work due: undoing that commit would be worse, and the periodic passes pick the work up)."""
    try:
        task(name).delay(*args)
    except Exception:
        log.exception("could not send %s", name)
