"""Celery workers register themselves when ready, heartbeat while alive and sign off on a clean
shutdown; a killed worker simply stops heartbeating and shows as offline."""

from __future__ import annotations

import logging
import os
import socket
import threading

from celery.signals import celeryd_init, worker_ready, worker_shutdown
from django import db
from django.conf import settings
from django.db import DatabaseError

from compute import services

log = logging.getLogger(__name__)
_name: str | None = None


def worker_name() -> str | None:
    """This process's registered worker name, if it is a Celery worker."""
    return _name


@celeryd_init.connect(dispatch_uid="maas-name-worker")
def _named(sender, **kwargs) -> None:
    """The name is known before the pool forks its processes, so that a job running in one of
    them records itself on this worker (the worker registry and the pool then agree)."""
    global _name
    _name = sender


@worker_ready.connect(dispatch_uid="maas-register-worker")
def _ready(sender, **kwargs) -> None:
    global _name
    _name = sender.hostname or f"{socket.gethostname()}:{os.getpid()}"
    queues = sorted(q.name for q in sender.app.amqp.queues.consume_from.values()) if sender.app.amqp.queues else []
    trains = settings.FINE_TUNING_QUEUE in queues
    device, memory = services.accelerator() if trains else ("cpu", 0)
    registration = {
        "node": services.this_node() if trains else None,
        "hostname": socket.gethostname(),
        "pid": os.getpid(),
        "queues": queues,
        "accelerator": device,
        "memory": memory,
    }
    services.register(name=_name, **registration)

    def beat() -> None:
        while not stop.wait(settings.WORKER_HEARTBEAT_SECONDS):
            try:
                services.heartbeat(_name, registration)
            except DatabaseError:
                # The database went away for a moment: beat again on a fresh connection next time.
                # A thread that died here would leave a live worker offline for good, and the pool
                # would take its allocations away.
                log.warning("worker heartbeat failed; retrying", exc_info=True)
                db.connection.close()

    stop = threading.Event()
    _ready.stop = stop
    threading.Thread(target=beat, name="worker-heartbeat", daemon=True).start()


@worker_shutdown.connect(dispatch_uid="maas-unregister-worker")
def _shutdown(sender, **kwargs) -> None:
    if _name:
        getattr(_ready, "stop", threading.Event()).set()
        services.stopped(_name)
