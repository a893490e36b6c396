"""The worker registry: registration, heartbeats, the job a worker runs."""

from __future__ import annotations

from django.utils import timezone

from compute.models import Worker


def register(*, name: str, hostname: str, pid: int, queues: list[str], accelerator: str, memory: int) -> Worker:
    worker, _ = Worker.objects.update_or_create(
        name=name,
        defaults={
            "hostname": hostname,
            "pid": pid,
            "queues": queues,
            "accelerator": accelerator,
            "accelerator_memory_bytes": memory,
            "current_job_id": "",
            "started_at": timezone.now(),
            "last_heartbeat_at": timezone.now(),
            "stopped_at": None,
        },
    )
    return worker


def heartbeat(name: str, registration: dict) -> None:
    """Beat; a worker whose row went missing registers again rather than beating into nothing."""
    if not Worker.objects.filter(name=name).update(last_heartbeat_at=timezone.now()):
        register(name=name, **registration)


def set_current_job(name: str, job_id: str) -> None:
    Worker.objects.filter(name=name).update(current_job_id=job_id, last_heartbeat_at=timezone.now())


def stopped(name: str) -> None:
    Worker.objects.filter(name=name).update(stopped_at=timezone.now(), current_job_id="")


def accelerator() -> tuple[str, int]:
    """What this process trains on: the first CUDA device, or the CPU and the machine's memory."""
    import os

    try:
        import torch

        if torch.cuda.is_available():
            properties = torch.cuda.get_device_properties(0)
            return properties.name, int(properties.total_memory)
    except ImportError:
        pass
    return "cpu", os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
