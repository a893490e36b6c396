"""Where a new replica goes: a live node whose agent runs, that is not draining, whose
accelerators have the memory the model needs (weights in the serving type and the KV budget), with
an accelerator that no other replica holds. Preferred: a node that runs fewer replicas of the same
deployment (a node's loss takes fewer of them), then one that has the model's weights in its cache
(no conversion before the first token), then the one with the most free accelerators."""

from __future__ import annotations

from datetime import timedelta

from django.conf import settings
from django.utils import timezone

from compute import allocations
from compute.models import Allocation, Node
from serving.models import Backend, Deployment

GIB = 1024**3


def agents_alive(now=None) -> list[Node]:
    now = now or timezone.now()
    seen = now - timedelta(seconds=3 * settings.WORKER_HEARTBEAT_SECONDS)
    return [n for n in allocations.live_nodes(now) if n.agent_seen_at is not None and n.agent_seen_at >= seen]


def choose(deployment: Deployment, need_bytes: int) -> Node | str:
    """The node, or why there is none (in words the model's users may read)."""
    nodes = [n for n in agents_alive() if n.schedulable]
    if not nodes:
        return "no node of the pool runs a node agent that could start it"
    fits = [n for n in nodes if not need_bytes or n.accelerator_memory_bytes >= need_bytes]
    if not fits:
        largest = max(n.accelerator_memory_bytes for n in nodes)
        return (
            f"a replica of {deployment.base_model_id} needs {need_bytes / GIB:.1f} GiB on an accelerator; "
            f"the largest of the pool has {largest / GIB:.1f} GiB"
        )
    serving = {}
    for node_id, devices in (
        Allocation.objects.filter(node__in=fits, kind=Allocation.Kind.SERVING)
        .exclude(state=Allocation.State.ENDED)
        .values_list("node_id", "devices")
    ):
        serving[node_id] = serving.get(node_id, 0) + len(devices)
    open_nodes = [n for n in fits if n.accelerator_count - serving.get(n.pk, 0) > 0]
    if not open_nodes:
        return "every accelerator of the pool that could take it serves already"
    mine = {}
    for node_id in Backend.objects.filter(deployment=deployment, state__in=["starting", "ready"]).values_list(
        "node_id", flat=True
    ):
        mine[node_id] = mine.get(node_id, 0) + 1

    def rank(node: Node):
        cached = deployment.base_model_id in (node.cached_models or [])
        return (mine.get(node.pk, 0), not cached, -(node.accelerator_count - serving.get(node.pk, 0)), node.name)

    return min(open_nodes, key=rank)
