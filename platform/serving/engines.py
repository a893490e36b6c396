"""The engines a replica can run, as command lines: our runtime (`python -m serving.runtime`) and
vLLM's OpenAI server (in its own virtualenv, VLLM_PYTHON). Both speak the protocol the gateway
and serving.replica_client speak, and both take the replica's secret from the environment, never
from argv (which `ps` shows)."""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

from django.conf import settings

from catalog.loader import resolve_dtype
from serving.models import Backend


class EngineUnavailable(Exception):
    """The engine cannot start on this node: `reason` for the tenant, `detail` (paths) for the operator."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(reason)
        self.reason, self.detail = reason, detail


@dataclass
class EngineSpec:
    name: str
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    log_path: Path | None = None


def threads_for(devices: list[int], accelerator_count: int) -> int:
    """A CPU accelerator is a share of the cores: the replica runs on its share's threads."""
    cores = os.cpu_count() or 1
    return max(1, cores * max(1, len(devices)) // max(1, accelerator_count))


def device_env(devices: list[int], accelerator: str, count: int) -> dict[str, str]:
    """What binds a process to its allocation: its GPUs, or on a CPU node its share of the cores."""
    if accelerator != "cpu":
        return {"CUDA_VISIBLE_DEVICES": ",".join(str(d) for d in devices)}
    return {"OMP_NUM_THREADS": str(threads_for(devices, count))}


def spec(backend: Backend, *, port: int, host: str, devices: list[int], accelerator: str, count: int) -> EngineSpec:
    base = backend.base_model
    on_cpu = accelerator == "cpu"
    env = {"PYTHONUNBUFFERED": "1", **device_env(devices, accelerator, count)}
    threads = threads_for(devices, count) if on_cpu else None
    log_dir = settings.VAR_DIR / "engines"
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{backend.name}.log"
    dtype = backend.deployment.dtype if backend.deployment else "float32"
    root = Path(settings.REPO_DIR)
    env["PYTHONPATH"] = os.pathsep.join([str(root / "platform"), str(root)])
    if backend.engine == Backend.Engine.VLLM:
        # vLLM's own "auto" means the checkpoint's type; ours, the fastest on this node's hardware.
        dtype = resolve_dtype(dtype, "cpu" if on_cpu else "cuda")
        return EngineSpec(backend.name, _vllm(backend, port, host, dtype), {**env, **_vllm_env(backend)}, log_path)
    argv = [sys.executable, "-m", "serving.runtime", "--model-source", json.dumps(base.source)]
    argv += ["--served-model-name", backend.upstream_model, "--cache-dir", str(settings.MODEL_CACHE_DIR)]
    argv += ["--adapter-root", str(settings.ADAPTER_STORE), "--dtype", dtype, "--host", host, "--port", str(port)]
    if base.kind == "embedding":
        argv += ["--task", "embed", "--max-model-len", str(base.context_length)]
    if threads:
        argv += ["--threads", str(threads)]
    if not on_cpu:
        argv += ["--device", "cuda"]
    env["MAAS_RUNTIME_API_KEY"] = backend.api_key
    return EngineSpec(backend.name, argv, env, log_path)


def _vllm(backend: Backend, port: int, host: str, dtype: str) -> list[str]:
    python = Path(settings.VLLM_PYTHON)
    if not python.exists():
        raise EngineUnavailable("vLLM is not installed on this node", f"no {python}; `make vllm` installs it")
    # Our wrapper converts a GGUF model's weights once, then becomes vLLM's server (exec).
    argv = [sys.executable, "-m", "serving.engine_vllm", str(python)]
    argv += ["--model-source", json.dumps(backend.base_model.source), "--cache-dir", str(settings.MODEL_CACHE_DIR)]
    argv += ["--", "--served-model-name", backend.upstream_model, "--host", host, "--port", str(port)]
    argv += ["--dtype", dtype, "--max-model-len", str(min(backend.base_model.context_length, 2048))]
    # The gateway aborts a request whose client left (/inference/v1/abort_requests, behind the
    # key) and reads vLLM's own count of what it generated from the stream's end.
    argv += ["--enable-scale-out"]
    if backend.base_model.kind == "embedding":
        return [*argv, "--runner", "pooling"]
    argv += ["--enable-lora", "--max-loras", "4", "--max-lora-rank", "64"]
    # Batch API requests carry priority 1 (later than the default 0): vLLM serves them after
    # interactive ones, and preempts them for those, as our runtime does.
    argv += ["--scheduling-policy", "priority"]
    # Usage says how many prompt tokens came from vLLM's prefix cache (kept apart per organization
    # by the cache salt the gateway sends): they are billed at the cached-input price.
    argv += ["--enable-prompt-tokens-details"]
    return argv


def _vllm_env(backend: Backend) -> dict[str, str]:
    return {
        "VLLM_API_KEY": backend.api_key,
        "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True",
        "VLLM_CPU_KVCACHE_SPACE": str(max(1, settings.SERVING_KV_BUDGET_BYTES // 1024**3)),
        "HF_HUB_OFFLINE": "1",
        "VLLM_NO_USAGE_STATS": "1",
        "DO_NOT_TRACK": "1",
    }
