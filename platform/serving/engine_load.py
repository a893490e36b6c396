"""What an engine carries now, read from its Prometheus /metrics: requests running and waiting,
and requests finished so far (our runtime's `maas_runtime_*`, vLLM's `vllm:*`). The scaler scales
on it; a draining replica's agent stops the engine once nothing runs."""

from __future__ import annotations

from dataclasses import dataclass

import httpx
from prometheus_client.parser import text_string_to_metric_families

from serving.models import Backend

RUNNING = {"maas_runtime_running_requests", "vllm:num_requests_running"}
WAITING = {"maas_runtime_queue_depth", "vllm:num_requests_waiting"}
FINISHED = {"maas_runtime_requests", "vllm:request_success"}
BATCH = {"maas_runtime_batch_requests"}  # of running and waiting, the Batch API's (our runtime says)


@dataclass(frozen=True)
class Load:
    running: float
    waiting: float
    finished: float
    batch: float = 0.0  # of running and waiting, Batch API requests

    @property
    def in_flight(self) -> float:
        return self.running + self.waiting

    @property
    def interactive(self) -> float:
        """What the scaler scales up for: batch work takes the replicas there are, never more."""
        return max(0.0, self.in_flight - self.batch)


def read(backend: Backend, timeout: float = 3.0) -> Load | None:
    """None when the engine cannot be read."""
    headers = {"Authorization": f"Bearer {backend.api_key}"} if backend.api_key else {}
    try:
        response = httpx.get(f"{backend.url}/metrics", headers=headers, timeout=timeout)
        response.raise_for_status()
    except httpx.HTTPError:
        return None
    running = waiting = finished = batch = 0.0
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            if family.name in RUNNING and sample.name in RUNNING:
                running += sample.value
            elif family.name in WAITING and sample.name in WAITING:
                waiting += sample.value
            elif family.name in FINISHED and sample.name.endswith("_total"):
                finished += sample.value
            elif family.name in BATCH and sample.name in BATCH:
                batch += sample.value
    return Load(running, waiting, finished, batch)
