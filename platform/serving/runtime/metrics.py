"""Prometheus metrics of the runtime, on a registry of its own."""

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

registry = CollectorRegistry()
REQUESTS = Counter(
    "maas_runtime_requests_total", "Finished generation requests", ["endpoint", "finish_reason"], registry=registry
)
PROMPT_TOKENS = Counter("maas_runtime_prompt_tokens_total", "Prompt tokens processed", registry=registry)
COMPLETION_TOKENS = Counter("maas_runtime_completion_tokens_total", "Tokens generated", registry=registry)
TIME_TO_FIRST_TOKEN = Histogram(
    "maas_runtime_time_to_first_token_seconds",
    "Queueing + prefill until the first token",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
    registry=registry,
)
BATCH_SIZE = Histogram(
    "maas_runtime_batch_size", "Rows per decode step", buckets=(1, 2, 4, 8, 16, 32, 64), registry=registry
)
QUEUE_DEPTH = Gauge("maas_runtime_queue_depth", "Requests waiting to join the batch", registry=registry)
RUNNING = Gauge("maas_runtime_running_requests", "Requests in the running batch", registry=registry)
LOADED_ADAPTERS = Gauge("maas_runtime_loaded_adapters", "LoRA adapters loaded", registry=registry)
PREEMPTED_ROWS = Counter(
    "maas_runtime_preempted_rows_total", "Batch rows that left a full batch for interactive requests", registry=registry
)
BATCH_REQUESTS = Gauge(
    "maas_runtime_batch_requests",
    "Batch API requests in the engine (running, waiting, or waiting to come back): included in the running and "
    "waiting gauges",
    registry=registry,
)
CACHED_PROMPT_TOKENS = Counter(
    "maas_runtime_cached_prompt_tokens_total",
    "Prompt tokens whose keys and values came from the prompt cache",
    registry=registry,
)
