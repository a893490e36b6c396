"""The inventory: nodes and their accelerators, the workers on them, registration and heartbeats."""

from __future__ import annotations

import os
import socket

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from compute.models import Accelerator, Node, Worker


def node_name() -> str:
    """This host's name in the pool (COMPUTE_NODE_NAME, or the hostname)."""
    return settings.COMPUTE_NODE_NAME or socket.gethostname()


def detect_accelerators() -> tuple[str, int, int]:
    """What this host trains and serves on: its CUDA devices (name, count, memory of each), or
    COMPUTE_CPU_ACCELERATORS slots of the CPU, sharing the machine's memory."""
    try:
        import torch

        if torch.cuda.is_available():
            properties = torch.cuda.get_device_properties(0)
            return properties.name, torch.cuda.device_count(), int(properties.total_memory)
    except ImportError:
        pass
    count = max(1, settings.COMPUTE_CPU_ACCELERATORS)
    return "cpu", count, os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // count


@transaction.atomic
def register_node(*, name: str, hostname: str, accelerator: str, count: int, memory: int) -> Node:
    """A node joins (or rejoins) the pool with its accelerators; what it holds stays held."""
    node, _ = Node.objects.update_or_create(
        name=name,
        defaults={
            "hostname": hostname,
            "accelerator": accelerator,
            "accelerator_count": count,
            "accelerator_memory_bytes": memory,
            "last_heartbeat_at": timezone.now(),
            "stopped_at": None,
        },
    )
    for index in range(count):
        Accelerator.objects.update_or_create(
            node=node, index=index, defaults={"name": accelerator, "memory_bytes": memory}
        )
    Accelerator.objects.filter(node=node, index__gte=count).delete()
    return node


def this_node() -> Node:
    """This host's node, registered on first use (a process that trains without a registered
    worker, such as a test or `manage.py` command, still takes its accelerators from the pool)."""
    node = Node.objects.filter(name=node_name()).first()
    if node is None or node.stopped_at is not None:
        accelerator, count, memory = detect_accelerators()
        return register_node(
            name=node_name(), hostname=socket.gethostname(), accelerator=accelerator, count=count, memory=memory
        )
    heartbeat_node(node.pk)  # the process asking is alive on it
    return node


def node_id(name: str) -> int | None:
    return Node.objects.filter(name=name).values_list("pk", flat=True).first()


def heartbeat_node(node_id: int) -> None:
    Node.objects.filter(pk=node_id).update(last_heartbeat_at=timezone.now(), stopped_at=None)


def register(
    *, name: str, hostname: str, pid: int, queues: list[str], accelerator: str, memory: int, node: Node | None = None
) -> Worker:
    worker, _ = Worker.objects.update_or_create(
        name=name,
        defaults={
            "node": node,
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
    """Beat for the worker and its node; a worker whose row went missing registers again rather
    than beating into nothing."""
    node = registration.get("node")
    if node is not None and not Node.objects.filter(pk=node.pk).update(
        last_heartbeat_at=timezone.now(), stopped_at=None
    ):
        registration["node"] = this_node()  # its row went missing too: the node joins again
    if not Worker.objects.filter(name=name).update(last_heartbeat_at=timezone.now()):
        register(name=name, **registration)


def set_current_job(name: str, job_id: str) -> None:
    Worker.objects.filter(name=name).update(current_job_id=job_id, last_heartbeat_at=timezone.now())


def stopped(name: str) -> None:
    Worker.objects.filter(name=name).update(stopped_at=timezone.now(), current_job_id="")


def accelerator() -> tuple[str, int]:
    """What this process trains on: the accelerator's name and memory."""
    name, _, memory = detect_accelerators()
    return name, memory


@transaction.atomic
def register_agent(address: str) -> Node:
    """This host's node agent joins: the node is registered (or rejoins) with the address its
    engines listen on."""
    node = this_node()
    Node.objects.filter(pk=node.pk).update(
        address=address, cores=os.cpu_count() or 1, agent_seen_at=timezone.now(), last_heartbeat_at=timezone.now()
    )
    node.refresh_from_db()
    return node


def agent_heartbeat(node_id: int, cached_models: list[str] | None = None) -> bool:
    """The agent is alive on its node (and so is the node). False: the row is gone; register again."""
    now = timezone.now()
    fields = {"agent_seen_at": now, "last_heartbeat_at": now, "stopped_at": None}
    if cached_models is not None:
        fields["cached_models"] = cached_models
    return bool(Node.objects.filter(pk=node_id).update(**fields))


def agent_stopped(node_id: int) -> None:
    Node.objects.filter(pk=node_id).update(agent_seen_at=None)
