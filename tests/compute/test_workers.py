"""Workers register themselves with their accelerator and queues, heartbeat, and show their job."""

import time

import pytest

from compute import selectors, services
from compute.models import Worker


@pytest.mark.slow
@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_a_running_worker_registers_and_heartbeats(celery_worker):
    deadline = time.monotonic() + 20
    while not Worker.objects.exists():  # the row comes back with the next heartbeat even after a flush
        assert time.monotonic() < deadline, "the worker did not register"
        time.sleep(0.3)
    worker = Worker.objects.get()
    assert worker.queues == ["default", "gpu"] and worker.pid == celery_worker.pid
    assert worker.accelerator == "cpu" and worker.accelerator_memory_bytes > 2**30
    first = worker.last_heartbeat_at
    time.sleep(2.5)
    worker.refresh_from_db()
    assert worker.last_heartbeat_at > first and selectors.state(worker) == "idle"


def test_states(db, settings):
    from datetime import timedelta

    from django.utils import timezone

    worker = services.register(name="w1", hostname="h", pid=1, queues=["gpu"], accelerator="cpu", memory=1)
    services.register(name="w2", hostname="h", pid=2, queues=["default"], accelerator="cpu", memory=1)
    assert selectors.state(worker) == "idle"
    assert selectors.training_capacity() == {"idle": 1, "busy": 0}  # w2 does not train
    services.set_current_job("w1", "ftjob-1")
    worker.refresh_from_db()
    assert selectors.state(worker) == "busy" and selectors.training_capacity() == {"idle": 0, "busy": 1}
    Worker.objects.filter(pk=worker.pk).update(last_heartbeat_at=timezone.now() - timedelta(minutes=5))
    worker.refresh_from_db()
    assert selectors.state(worker) == "offline" and selectors.training_capacity() == {"idle": 0, "busy": 0}
    services.stopped("w1")
    worker.refresh_from_db()
    assert selectors.state(worker) == "stopped" and worker.current_job_id == ""
