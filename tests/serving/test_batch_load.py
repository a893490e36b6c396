"""The pool's scaler and Batch API work, on the real runtime: batch requests running on a replica
show as batch load on its metrics; they neither make the scaler add a replica nor let it take the
replica away for idleness, while the same number of interactive requests adds one."""

import threading
import time
from datetime import timedelta

import httpx
import pytest
from django.conf import settings
from django.db import transaction
from django.utils import timezone

from catalog.models import BaseModel
from serving import autoscale, deployments, engine_load
from serving.models import Backend, Deployment, ReplicaState
from tests.conftest import DEMO_MODEL

pytestmark = [pytest.mark.slow, pytest.mark.django_db]


def hold_requests(runtime, count: int, priority: int, stop: threading.Event) -> list[threading.Thread]:
    """`count` long generations on the runtime, each ended (its connection closed) when `stop` is set."""
    headers = {"Authorization": f"Bearer {runtime.api_key}"}
    body = {
        "priority": priority,
        "model": DEMO_MODEL,
        "messages": [{"role": "user", "content": "Tell me a long story about the sea."}],
        "max_tokens": 400,
        "stream": True,
    }

    def run():
        with httpx.stream("POST", runtime.url + "/v1/chat/completions", json=body, headers=headers, timeout=120) as r:
            for _ in r.iter_lines():
                if stop.is_set():
                    return

    threads = [threading.Thread(target=run, daemon=True) for _ in range(count)]
    for thread in threads:
        thread.start()
    return threads


def wait_for_load(backend: Backend, check) -> engine_load.Load:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        load = engine_load.read(backend)
        if load is not None and check(load):
            return load
        time.sleep(0.2)
    raise AssertionError(f"the replica's load never matched: {engine_load.read(backend)}")


@pytest.fixture
def replica(runtime_server):
    BaseModel.objects.filter(pk=DEMO_MODEL).update(
        min_replicas=0, max_replicas=2, target_concurrency=2, scale_down_idle_seconds=60
    )
    with transaction.atomic():
        deployment = deployments.for_model(BaseModel.objects.get(pk=DEMO_MODEL))
    Deployment.objects.filter(pk=deployment.pk).update(
        desired=1, active_at=timezone.now() - timedelta(hours=1)
    )  # idle for an hour: without work, the scaler takes it to zero
    backend = Backend.objects.create(
        name="batch-load",
        url=runtime_server.url,
        base_model_id=DEMO_MODEL,
        api_key=runtime_server.api_key,
        deployment=deployment,
        state=ReplicaState.READY,
        healthy=True,
    )
    return deployment, backend


def desired_after_passes(deployment: Deployment) -> int:
    now = timezone.now()
    for later in (0, settings.SERVING_SCALE_UP_AFTER_SECONDS + 1):
        deployment.refresh_from_db()
        autoscale.follow_load(deployment, now + timedelta(seconds=later))
    deployment.refresh_from_db()
    return deployment.desired


def test_batch_load_keeps_its_replica_but_adds_none_and_interactive_load_adds_one(replica, runtime_server):
    deployment, backend = replica
    stop = threading.Event()
    try:
        hold_requests(runtime_server, 4, 1, stop)
        load = wait_for_load(backend, lambda load: load.batch >= 4)
        assert load.in_flight >= 4 and load.interactive == 0
        assert desired_after_passes(deployment) == 1  # neither scaled up nor down
    finally:
        stop.set()
    wait_for_load(backend, lambda load: load.in_flight == 0)
    stop = threading.Event()
    try:
        hold_requests(runtime_server, 4, 0, stop)
        wait_for_load(backend, lambda load: load.interactive >= 4 and load.batch == 0)
        assert desired_after_passes(deployment) == 2
    finally:
        stop.set()
    wait_for_load(backend, lambda load: load.in_flight == 0)
