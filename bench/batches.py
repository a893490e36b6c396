"""The Batch API through the whole platform as `make run` starts it (web, workers, the demo
model's replica, the batch runner), in one run:

1. Throughput on an idle pool: REQUESTS chat requests sent one after the other by one client,
   vs the same requests as one batch (created, run, finalized): completion tokens/s of each, and
   the ratio.
2. Interactive latency beside a batch: a client's sequential calls without a batch running, then
   while a batch of BACKGROUND requests runs: p50 and p95 of each, and the p95 ratio.

Run: .venv/bin/python bench/batches.py   (figures also go to bench/results/)
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "platform"), str(ROOT)]

from bench.serving_scale import api_key  # noqa: E402
from bench.soak import Platform  # noqa: E402

MODEL = "smollm2-135m-instruct"
REQUESTS = int(os.environ.get("BENCH_REQUESTS", "48"))
BACKGROUND = int(os.environ.get("BENCH_BACKGROUND", "96"))
INTERACTIVE = int(os.environ.get("BENCH_INTERACTIVE", "20"))
MAX_TOKENS = int(os.environ.get("BENCH_MAX_TOKENS", "32"))
QUESTIONS = ["What is {i} plus {i}?", "Name a colour and say why you like it ({i}).", "Write a line about rain ({i})."]


def body(i: int, max_tokens: int = MAX_TOKENS) -> dict:
    content = QUESTIONS[i % len(QUESTIONS)].format(i=i)
    return {"model": MODEL, "messages": [{"role": "user", "content": content}], "max_tokens": max_tokens}


def percentile(values: list[float], q: int) -> float:
    return round(statistics.quantiles(values, n=100)[q - 1], 3) if len(values) > 1 else round(values[0], 3)


async def one_by_one(client: httpx.AsyncClient, count: int) -> tuple[float, int]:
    started, tokens = time.perf_counter(), 0
    for i in range(count):
        answer = await client.post("/v1/chat/completions", json=body(i))
        answer.raise_for_status()
        tokens += answer.json()["usage"]["completion_tokens"]
    return time.perf_counter() - started, tokens


async def start_batch(client: httpx.AsyncClient, count: int, offset: int = 0) -> str:
    lines = "".join(
        json.dumps({"custom_id": f"r{i}", "method": "POST", "url": "/v1/chat/completions", "body": body(offset + i)})
        + "\n"
        for i in range(count)
    )
    file = await client.post("/v1/files", files={"file": ("b.jsonl", lines.encode())}, data={"purpose": "batch"})
    file.raise_for_status()
    created = await client.post(
        "/v1/batches",
        json={"input_file_id": file.json()["id"], "endpoint": "/v1/chat/completions", "completion_window": "24h"},
    )
    created.raise_for_status()
    return created.json()["id"]


async def wait_batch(client: httpx.AsyncClient, batch_id: str) -> dict:
    while True:
        batch = (await client.get(f"/v1/batches/{batch_id}")).json()
        if batch["status"] in ("completed", "failed", "expired", "cancelled"):
            if batch["status"] != "completed":
                raise RuntimeError(f"the batch ended {batch['status']}: {batch}")
            return batch
        await asyncio.sleep(0.2)


async def as_batch(client: httpx.AsyncClient, count: int) -> tuple[float, int]:
    started = time.perf_counter()
    batch = await wait_batch(client, await start_batch(client, count))
    return time.perf_counter() - started, batch["usage"]["output_tokens"]


async def latencies(client: httpx.AsyncClient, count: int) -> list[float]:
    found = []
    for i in range(count):
        started = time.perf_counter()
        answer = await client.post("/v1/chat/completions", json=body(1000 + i, 16))
        answer.raise_for_status()
        found.append(time.perf_counter() - started)
    return found


async def measure(url: str, key: str) -> dict:
    headers = {"Authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=600) as client:
        await one_by_one(client, 2)  # warm: the replica's first calls
        alone_s, alone_tokens = await one_by_one(client, REQUESTS)
        batch_s, batch_tokens = await as_batch(client, REQUESTS)
        quiet = await latencies(client, INTERACTIVE)
        background = await start_batch(client, BACKGROUND, offset=5000)
        await asyncio.sleep(2)  # the runner has claimed its first requests
        busy = await latencies(client, INTERACTIVE)
        still_running = (await client.get(f"/v1/batches/{background}")).json()["status"] == "in_progress"
        await wait_batch(client, background)
    return {
        "requests": REQUESTS,
        "max_tokens": MAX_TOKENS,
        "one_by_one_tokens_per_s": round(alone_tokens / alone_s, 1),
        "batch_tokens_per_s": round(batch_tokens / batch_s, 1),
        "batch_vs_one_by_one": round((batch_tokens / batch_s) / (alone_tokens / alone_s), 2),
        "interactive_p50_s_without_batch": percentile(quiet, 50),
        "interactive_p95_s_without_batch": percentile(quiet, 95),
        "interactive_p50_s_with_batch": percentile(busy, 50),
        "interactive_p95_s_with_batch": percentile(busy, 95),
        "interactive_p95_with_vs_without": round(percentile(busy, 95) / percentile(quiet, 95), 2),
        "batch_still_running_after_interactive_calls": still_running,
    }


def main() -> None:
    var_dir = Path(tempfile.mkdtemp(prefix="bench-batches-"))
    env = {k: v for k, v in os.environ.items() if k not in ("PORT", "VAR_DIR")}
    env.setdefault("MODEL_CACHE_DIR", str(ROOT / "var" / "models"))
    platform = Platform(var_dir, 8761, env)
    platform.start()
    try:
        result = asyncio.run(measure(platform.url, api_key(var_dir)))
    finally:
        platform.stop()
    print(json.dumps(result, indent=2))
    (ROOT / "bench" / "results" / "batches.json").write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
