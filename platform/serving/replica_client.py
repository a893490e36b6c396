"""What the control plane asks of a model server, in the protocol our runtime and vLLM (started
with --enable-lora) both speak: load and unload a LoRA adapter, list what it serves, and probe it
with a real one-token generation (an embedding model: a real embedding). Synchronous (Celery tasks
and the reconciler call it)."""

from __future__ import annotations

from dataclasses import dataclass

import httpx

from serving.models import Backend

TIMEOUT = httpx.Timeout(30.0, connect=3.0)
LOAD_FAILED = "the replica could not load the model's adapter"
UNLOAD_FAILED = "the replica could not unload the model's adapter"
PROBE_FAILED = "the replica's test generation failed"


@dataclass(frozen=True)
class Outcome:
    ok: bool
    error: str = ""  # what happened, for the operator (addresses, the server's own words)
    reason: str = ""  # what a tenant is told


def _headers(backend: Backend) -> dict:
    return {"Authorization": f"Bearer {backend.api_key}"} if backend.api_key else {}


def _failure(error: Exception | str, reason: str) -> Outcome:
    if isinstance(error, httpx.TransportError):
        reason = "the replica cannot be reached"
    text = error if isinstance(error, str) else f"{type(error).__name__}: {error}"
    return Outcome(False, text[:500], reason)


def load_adapter(backend: Backend, *, name: str, path: str) -> Outcome:
    """Load an adapter under `name`; one already loaded under that name is fine."""
    try:
        response = httpx.post(
            f"{backend.url}/v1/load_lora_adapter",
            json={"lora_name": name, "lora_path": path},
            headers=_headers(backend),
            timeout=TIMEOUT,
        )
    except httpx.HTTPError as error:
        return _failure(error, LOAD_FAILED)
    if response.status_code == 200 or "already" in response.text.lower():
        return Outcome(True)
    return _failure(f"loading the adapter answered {response.status_code}: {response.text[:300]}", LOAD_FAILED)


def unload_adapter(backend: Backend, *, name: str) -> Outcome:
    try:
        response = httpx.post(
            f"{backend.url}/v1/unload_lora_adapter",
            json={"lora_name": name},
            headers=_headers(backend),
            timeout=TIMEOUT,
        )
    except httpx.HTTPError as error:
        return _failure(error, UNLOAD_FAILED)
    if response.status_code in (200, 404):
        return Outcome(True)  # unloaded, or not there
    return _failure(f"unloading the adapter answered {response.status_code}: {response.text[:300]}", UNLOAD_FAILED)


def served_models(backend: Backend) -> set[str] | None:
    """The model names the server serves now (base and adapters); None if it cannot be reached."""
    try:
        response = httpx.get(f"{backend.url}/v1/models", headers=_headers(backend), timeout=TIMEOUT)
        response.raise_for_status()
        return {item["id"] for item in response.json().get("data", []) if isinstance(item, dict) and "id" in item}
    except (httpx.HTTPError, ValueError, AttributeError):
        return None


def _generated(answer: dict) -> bool:
    return answer["usage"]["completion_tokens"] >= 1


def _embedded(answer: dict) -> bool:
    vector = answer["data"][0]["embedding"]
    return bool(vector) and all(isinstance(x, float) for x in vector)


def probe(backend: Backend, *, model: str) -> Outcome:
    """A real one-token completion of `model` (the base model's served name or an adapter's), or
    for an embedding model a real embedding."""
    if backend.base_model.kind == "embedding":
        path, body, what, check = "/v1/embeddings", {"input": "Hi", "encoding_format": "float"}, "embedding", _embedded
    else:
        path, body, what = (
            "/v1/chat/completions",
            {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1},
            "generation",
        )
        check = _generated
    try:
        response = httpx.post(
            backend.url + path, json={"model": model, **body}, headers=_headers(backend), timeout=TIMEOUT
        )
    except httpx.HTTPError as error:
        return _failure(error, PROBE_FAILED)
    if response.status_code != 200:
        return _failure(f"a test {what} answered {response.status_code}: {response.text[:300]}", PROBE_FAILED)
    try:
        if not check(response.json()):
            return _failure(f"a test {what} produced nothing", PROBE_FAILED)
    except (ValueError, KeyError, TypeError, IndexError):
        return _failure(f"a test {what} answered something that is not one", PROBE_FAILED)
    return Outcome(True)
