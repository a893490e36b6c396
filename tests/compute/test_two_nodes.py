"""Two nodes on one machine: two network namespaces, each a host with its own address and its own
node agent, reaching the database and Redis through relays. A two-replica deployment lands on both
nodes, the gateway (in this namespace) reaches both; killing one node's agent and everything it
runs moves its replica to the other node within a bound, while the model keeps answering."""

from __future__ import annotations

import os
import signal
import time

import httpx
import pytest

from catalog.models import BaseModel
from compute import allocations
from serving import autoscale, engine_load
from serving.models import Backend
from tests import netns
from tests.conftest import DEMO_MODEL, _database_url, start_node_agent

pytestmark = [
    pytest.mark.slow,
    pytest.mark.django_db(transaction=True, serialized_rollback=True),
    pytest.mark.skipif(bool(netns.available()), reason=netns.available() or "namespaces available"),
]
KEY = f"model:{DEMO_MODEL}"
MOVE_BOUND_SECONDS = 90  # three missed heartbeats (2 s each), the reap, and a new engine's start


@pytest.fixture
def two_hosts(tmp_path, settings):
    settings.WORKER_HEARTBEAT_SECONDS = 2  # as the agents': a silent node is reaped after 6 s
    hosts, agents = [], []
    try:
        for index in (1, 2):
            host = netns.make_host(index)
            hosts.append(host)
            env = {
                "DATABASE_URL": host.reachable(_database_url()),
                "COMPUTE_NODE_NAME": f"node-{index}",
                "COMPUTE_NODE_ADDRESS": host.address,
                "COMPUTE_CPU_ACCELERATORS": "2",
                "WORKER_HEARTBEAT_SECONDS": "2",
            }
            if os.environ.get("REDIS_URL"):
                env["REDIS_URL"] = host.reachable(os.environ["REDIS_URL"])
            agents.append(start_node_agent(tmp_path / f"agent-{index}.log", env, prefix=host.prefix()))
        yield hosts, agents
    finally:
        for agent in agents:
            if agent.process.poll() is None:
                os.killpg(agent.process.pid, signal.SIGTERM)
                agent.process.wait(30)
        for host in hosts:
            netns.remove(host)


def ready_replicas() -> list[Backend]:
    return list(Backend.objects.filter(deployment__key=KEY, state="ready").select_related("node").order_by("pk"))


def ask(live_web, key: str) -> int:
    return httpx.post(
        f"{live_web.url}/v1/chat/completions",
        json={"model": DEMO_MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4},
        headers={"Authorization": f"Bearer {key}"},
        timeout=120,
    ).status_code


def test_replicas_spread_over_two_nodes_and_move_when_one_dies(live_web, two_hosts, make_tenant):
    hosts, agents = two_hosts
    BaseModel.objects.filter(pk=DEMO_MODEL).update(min_replicas=2, max_replicas=2)
    deadline = time.monotonic() + 240
    while len(ready := ready_replicas()) < 2:
        assert time.monotonic() < deadline, [a.log()[-1500:] for a in agents]
        autoscale.scale_all()
        time.sleep(1)
    assert sorted(b.node.name for b in ready) == ["node-1", "node-2"]
    assert sorted(b.url.split("//")[1].split(":")[0] for b in ready) == [hosts[0].address, hosts[1].address]

    key = make_tenant("two-nodes").key()
    assert [ask(live_web, key) for _ in range(12)] == [200] * 12
    assert all(engine_load.read(b).finished > 1 for b in ready)  # each took calls (besides its probe)

    # Node 1 dies: its agent and every process it started (its engine) are killed at once.
    on_node_1 = next(b for b in ready if b.node.name == "node-1")
    os.killpg(agents[0].process.pid, signal.SIGKILL)
    killed_at = time.monotonic()
    answers = []
    while True:
        answers.append(ask(live_web, key))
        allocations.reap_nodes()  # what beat's reaper and scaler do
        autoscale.scale_all()
        ready = ready_replicas()
        if len(ready) == 2 and all(b.node.name == "node-2" for b in ready):
            break
        assert time.monotonic() - killed_at < MOVE_BOUND_SECONDS, (ready, agents[1].log()[-1500:])
        time.sleep(1)
    moved = time.monotonic() - killed_at
    print(f"replica moved from node-1 to node-2 in {moved:.1f} s; {len(answers)} calls meanwhile")
    assert answers == [200] * len(answers)  # the model kept answering
    assert Backend.objects.get(pk=on_node_1.pk).state == "ended"
