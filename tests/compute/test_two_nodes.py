"""Two nodes on one machine: two network namespaces, each a host with its own address and its own
node agent, reaching the database and Redis through relays. A two-replica deployment lands on both
nodes, the gateway (in this namespace) reaches both; killing one node's agent and everything it
runs moves its replica to the other node within a bound, while the model keeps answering; a
fine-tune on a node that dies resumes on the other node from its last checkpoint."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import httpx
import pytest
from django.conf import settings as django_settings

from catalog.models import BaseModel, FineTunedModel
from compute import allocations
from compute.models import Allocation, Node
from compute.processes import celery_worker as worker_argv
from compute.processes import trainer as trainer_argv
from fine_tuning import jobs, retention, services
from fine_tuning.models import Checkpoint, FineTuningJob, JobEvent
from serving import autoscale, engine_load
from serving.models import Backend
from tenancy import scope
from tenancy.audit import Actor
from tests import netns
from tests.conftest import DEMO_MODEL, REPO, _database_url, start_node_agent
from tests.fine_tuning.test_jobs import FAST, fact_upload
from tests.serving.test_pool_replicas import wait_until

pytestmark = [
    pytest.mark.slow,
    pytest.mark.django_db(transaction=True, serialized_rollback=True),
    pytest.mark.skipif(bool(netns.available()), reason=netns.available() or "namespaces available"),
]
KEY = f"model:{DEMO_MODEL}"
MOVE_BOUND_SECONDS = 90  # three missed heartbeats (2 s each), the reap, and a new engine's start


@contextlib.contextmanager
def hosts_with_agents(tmp_path, accelerators: int):
    hosts, agents, network = [], [], netns.make_network()
    try:
        for index in (1, 2):
            host = netns.make_host(network, index)
            hosts.append(host)
            env = {
                "DATABASE_URL": host.reachable(_database_url()),
                "COMPUTE_NODE_NAME": f"node-{index}",
                "COMPUTE_NODE_ADDRESS": host.address,
                "COMPUTE_NODE_INTERFACE": host.interface,
                "COMPUTE_CPU_ACCELERATORS": str(accelerators),
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
        netns.remove_network(network)


@pytest.fixture
def two_hosts(tmp_path, settings):
    """Two hosts offering two CPU accelerators each."""
    settings.WORKER_HEARTBEAT_SECONDS = 2  # as the agents': a silent node is reaped after 6 s
    with hosts_with_agents(tmp_path, 2) as both:
        yield both


@pytest.fixture
def two_small_hosts(tmp_path, settings):
    """Two hosts offering one CPU accelerator each."""
    settings.WORKER_HEARTBEAT_SECONDS = 2
    with hosts_with_agents(tmp_path, 1) as both:
        yield both


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


def gpu_worker(host, name: str, queue: str, default_queue: str, log_path, accelerators: int = 2) -> subprocess.Popen:
    env = {
        **os.environ,
        "DATABASE_URL": host.reachable(_database_url()),
        "VAR_DIR": str(django_settings.VAR_DIR),
        "PYTHONPATH": f"{REPO / 'platform'}{os.pathsep}{REPO}",
        "COMPUTE_NODE_NAME": name,
        "COMPUTE_NODE_INTERFACE": host.interface,
        "COMPUTE_CPU_ACCELERATORS": str(accelerators),
        "WORKER_HEARTBEAT_SECONDS": "2",
        "FINE_TUNING_QUEUE": queue,
        "FINE_TUNING_LEASE_SECONDS": "6",
        "FINE_TUNING_CHECKPOINT_EVERY": "2",
    }
    if os.environ.get("REDIS_URL"):
        env["REDIS_URL"] = host.reachable(os.environ["REDIS_URL"])
    argv = worker_argv([queue, default_queue], name=f"{name}-{os.getpid()}@%h", pool="solo")
    return subprocess.Popen(
        [*host.prefix(), *argv],
        cwd=REPO,
        env=env,
        stdout=log_path.open("w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


_woken = {"at": 0.0}


def keep_training_on_the_two_nodes() -> bool:
    """Other nodes that the suite's own workers run (this host's) take no job of these tests: a
    job would count as fitting there, and wait for their workers instead of the two nodes'. Their
    rows come back with a heartbeat after a test's flush, so this is applied while waiting too,
    and the two nodes' workers are woken now and then to claim again (as beat's reaper does)."""
    if Node.objects.exclude(name__in=["node-1", "node-2"]).exclude(schedulable=False).update(schedulable=False):
        _woken["at"] = 0.0
    if time.monotonic() - _woken["at"] > 5:
        _woken["at"] = time.monotonic()
        allocations.wake_training()
    return False


def create_job(tenant, **options):
    """A fine-tune of the demo model on a validated file, created as the API creates it."""
    upload = fact_upload()
    upload.sha256 = "0" * 64  # what the upload view computes while the body arrives
    file = services.upload_file(organization_id=tenant.org.pk, uploaded=upload, purpose="fine-tune", actor=Actor())
    file = services.validate_file(file.pk)
    return jobs.create(
        organization_id=tenant.org.pk, model=DEMO_MODEL, training_file=file.pk, seed=3, actor=Actor(), **options
    )


def test_a_job_on_a_node_that_dies_resumes_on_the_other_node(two_hosts, make_tenant, settings, tmp_path):
    from maas.celery import app

    hosts, _ = two_hosts
    queue, default_queue = f"gpu-nodes-{os.getpid()}", f"default-nodes-{os.getpid()}"
    settings.FINE_TUNING_QUEUE, settings.FINE_TUNING_LEASE_SECONDS = queue, 6
    tenant = make_tenant("nodes")
    with scope.organization(tenant.org.pk):
        app.conf.task_always_eager, app.conf.task_default_queue = False, default_queue
        first = gpu_worker(hosts[0], "node-1", queue, default_queue, tmp_path / "worker-1.log")
        second = None
        try:
            keep_training_on_the_two_nodes()
            job = create_job(tenant, hyperparameters=FAST | {"n_epochs": 4})
            wait_until(
                lambda: keep_training_on_the_two_nodes() or Checkpoint.all_orgs.filter(job_id=job.pk).exists(),
                120,
                "the first checkpoint",
            )
            assert Allocation.objects.get(holder=job.pk, state="active").node.name == "node-1"
            os.killpg(first.pid, signal.SIGKILL)  # node 1 dies: its worker and trainer, without warning
            first.wait(10)
            second = gpu_worker(hosts[1], "node-2", queue, default_queue, tmp_path / "worker-2.log")
            wait_until(
                lambda: jobs.requeue_expired() or None, 30, "the lease to run out and the job to be queued again"
            )
            allocations.reap_nodes()
            done = wait_until(
                lambda: (
                    keep_training_on_the_two_nodes()
                    or FineTuningJob.all_orgs.filter(pk=job.pk, status__in=FineTuningJob.FINISHED).first()
                ),
                300,
                (tmp_path / "worker-2.log").read_text()[-2000:],
            )
        finally:
            app.conf.task_always_eager, app.conf.task_default_queue = True, "default"
            for worker in (first, second):
                if worker is not None and worker.poll() is None:
                    os.killpg(worker.pid, signal.SIGTERM)
                    worker.wait(30)
    assert done.status == "succeeded", done.error
    assert done.attempts == 2
    ran_on = Allocation.objects.filter(holder=job.pk).order_by("created_at").values_list("node__name", flat=True)
    assert list(ran_on) == ["node-1", "node-2"]
    started = [
        m for m in JobEvent.all_orgs.filter(job=done).values_list("message", flat=True) if m.startswith("Training ")
    ]
    assert "resuming after step" in started[0]  # newest first: the run on node 2 went on from node 1's checkpoint


def run_across_the_two_nodes(tenant, hosts, agents, settings, tmp_path, hyperparameters, while_running=None):
    """A two-accelerator job on the two one-accelerator nodes, led by node 1's GPU worker: the job
    and the job once finished. `while_running()` runs once the job is created."""
    from maas.celery import app

    queue, default_queue = f"gpu-gang-{os.getpid()}", f"default-gang-{os.getpid()}"
    settings.FINE_TUNING_QUEUE = queue
    log = tmp_path / "worker-1.log"
    with scope.organization(tenant.org.pk):
        app.conf.task_always_eager, app.conf.task_default_queue = False, default_queue
        leader = gpu_worker(hosts[0], "node-1", queue, default_queue, log, accelerators=1)
        try:
            keep_training_on_the_two_nodes()
            job = create_job(tenant, hyperparameters=hyperparameters, accelerators=2)
            if while_running is not None:
                while_running(job)
            done = wait_until(
                lambda: (
                    keep_training_on_the_two_nodes()
                    or FineTuningJob.all_orgs.filter(pk=job.pk, status__in=FineTuningJob.FINISHED).first()
                ),
                400,
                log.read_text()[-2000:] + agents[1].log()[-1500:],
            )
        finally:
            app.conf.task_always_eager, app.conf.task_default_queue = True, "default"
            os.killpg(leader.pid, signal.SIGTERM)
            leader.wait(30)
    return job, done


def test_a_job_larger_than_any_node_trains_across_both_and_learns_what_one_node_would(
    two_small_hosts, make_tenant, settings, tmp_path
):
    """Two accelerators asked, one per node: the job is gang-scheduled over both nodes (both
    allocations taken together), node 1's worker leads torchrun's rendezvous and node 2's agent
    runs its part; the adapter is the one two processes on one node make, to float rounding."""
    from tests.fine_tuning.test_distributed import EXACT, relative_difference

    hosts, agents = two_small_hosts
    tenant = make_tenant("gang")
    job, done = run_across_the_two_nodes(
        tenant, hosts, agents, settings, tmp_path, FAST | {"n_epochs": 2, "lora_dropout": 0}
    )
    assert done.status == "succeeded", done.error
    held = Allocation.objects.filter(holder__startswith=job.pk).order_by("holder")
    assert [(a.holder, a.node.name, a.devices, a.state) for a in held] == [
        (job.pk, "node-1", [0], "ended"),
        (f"{job.pk}/1", "node-2", [0], "ended"),
    ]
    assert held[0].started_at == held[1].started_at  # taken together
    assert "--node-rank=1" in held[1].launch["argv"] and "started its part" in agents[1].log()

    # The same run on one node, two processes: the same adapter.
    config = json.loads((retention.work_dir(job.pk) / "config.json").read_text())
    config["output_dir"] = str(tmp_path / "one-node")
    (tmp_path / "one-node.json").write_text(json.dumps(config))
    one_node = subprocess.run(
        [*trainer_argv(2), "--config", str(tmp_path / "one-node.json")],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": f"{REPO / 'platform'}{os.pathsep}{REPO}"},
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert one_node.returncode == 0, one_node.stderr[-3000:]
    done_line = json.loads([line for line in one_node.stdout.splitlines() if '"done"' in line][-1])
    tuned = django_settings.ADAPTER_STORE / FineTunedModel.all_orgs.get(pk=done.fine_tuned_model).adapter_path
    assert relative_difference(Path(done_line["adapter_dir"]), tuned) < EXACT


def test_a_job_across_nodes_whose_other_part_dies_is_queued_again_and_resumes(
    two_small_hosts, make_tenant, settings, tmp_path
):
    """Node 2's part of a gang job is killed mid-run (an OOM kill, a lost host): the leading node's
    run stops, the job goes back to the queue (not failed: nothing in the job was wrong), is
    gang-scheduled again and resumes from its last checkpoint."""
    hosts, agents = two_small_hosts

    def kill_the_other_part(job) -> None:
        wait_until(
            lambda: keep_training_on_the_two_nodes() or Checkpoint.all_orgs.filter(job_id=job.pk).exists(),
            300,
            agents[1].log()[-1500:],
        )
        (part,) = re.findall(r"started its part on this node \(pid (\d+)\)", agents[1].log())
        os.killpg(int(part), signal.SIGKILL)

    tenant = make_tenant("gang-kill")
    job, done = run_across_the_two_nodes(
        tenant, hosts, agents, settings, tmp_path, FAST | {"n_epochs": 4}, while_running=kill_the_other_part
    )
    assert done.status == "succeeded", done.error
    assert done.attempts == 2
    parts = Allocation.objects.filter(holder=f"{job.pk}/1").order_by("created_at")
    assert [(a.node.name, a.state) for a in parts] == [("node-2", "ended"), ("node-2", "ended")]
    messages = list(JobEvent.all_orgs.filter(job=done).values_list("message", flat=True))
    assert any(m.startswith("Interrupted: its run across 2 nodes stopped") for m in messages)
    started = [m for m in messages if m.startswith("Training ")]
    assert "resuming after step" in started[0]  # newest first
