"""The pool scaling a model's replicas under a load step, through the whole platform as `make run`
starts it (the demo model's serving policy: one replica at least, two at most, four concurrent
requests per replica as the target; the scaler as beat runs it).

1. Cold start: the demo model scaled to zero, one call; seconds until its first token.
2. A load step: one client for STEP_SECONDS, then sixteen; the seconds from the step until a
   second replica serves, and the p95 latency of calls before the step, after it while one replica
   serves, and once two serve.

Run: .venv/bin/python bench/serving_scale.py   (figures also go to bench/results/)
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

from bench.soak import Platform  # noqa: E402

MODEL = "smollm2-135m-instruct"
STEP_SECONDS = int(os.environ.get("BENCH_STEP_SECONDS", "30"))
AFTER_SECONDS = int(os.environ.get("BENCH_AFTER_SECONDS", "40"))
BODY = {"model": MODEL, "messages": [{"role": "user", "content": "Name a colour."}], "max_tokens": 16}


def p95(values: list[float]) -> float | None:
    if len(values) < 2:
        return round(values[0], 2) if values else None
    return round(statistics.quantiles(values, n=20)[-1], 2)


def django_setup(var_dir: Path) -> None:
    os.environ.update(VAR_DIR=str(var_dir), DJANGO_SETTINGS_MODULE="maas.settings")
    import django

    django.setup()


def ready_replicas(states=("ready",)) -> int:
    from django.db import close_old_connections

    from serving.models import Backend

    close_old_connections()
    return Backend.objects.filter(deployment__key=f"model:{MODEL}", state__in=states).count()


def api_key(var_dir: Path) -> str:
    import subprocess

    out = subprocess.run(
        [sys.executable, "manage.py", "create_api_key", "demo", "--name", f"bench-{time.time_ns()}"],
        cwd=ROOT,
        env={**os.environ, "VAR_DIR": str(var_dir)},
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout.strip().splitlines()[-1]


async def cold_start(url: str, key: str) -> float:
    from asgiref.sync import sync_to_async

    from catalog.models import BaseModel

    await sync_to_async(lambda: BaseModel.objects.filter(pk=MODEL).update(min_replicas=0, scale_down_idle_seconds=5))()
    # The scaler takes it to zero after 5 s idle; the last replica drains and ends.
    while await sync_to_async(ready_replicas)(("starting", "ready", "draining")):
        await asyncio.sleep(1)
    started = time.perf_counter()
    headers = {"Authorization": f"Bearer {key}"}
    async with (
        httpx.AsyncClient(timeout=300) as client,
        client.stream("POST", url + "/v1/chat/completions", json={**BODY, "stream": True}, headers=headers) as response,
    ):
        async for line in response.aiter_lines():
            if '"content"' in line:
                return time.perf_counter() - started
    raise RuntimeError("no token came")


async def load_step(url: str, key: str) -> dict:
    from asgiref.sync import sync_to_async

    latencies: list[tuple[float, float, int]] = []  # (start, seconds, replicas serving when it started)
    stop = asyncio.Event()
    replicas = {"now": await sync_to_async(ready_replicas)()}

    async def client_loop(client: httpx.AsyncClient, start_at: float) -> None:
        while time.perf_counter() < start_at:
            await asyncio.sleep(0.1)
        while not stop.is_set():
            began, serving = time.perf_counter(), replicas["now"]
            answer = await client.post(url + "/v1/chat/completions", json=BODY)
            if answer.status_code == 200:
                latencies.append((began, time.perf_counter() - began, serving))

    async def watch() -> None:
        while not stop.is_set():
            replicas["now"] = await sync_to_async(ready_replicas)()
            if replicas["now"] >= 2 and "second_at" not in replicas:
                replicas["second_at"] = time.perf_counter()
            await asyncio.sleep(0.5)

    begin = time.perf_counter()
    step = begin + STEP_SECONDS
    async with httpx.AsyncClient(timeout=300, headers={"Authorization": f"Bearer {key}"}) as client:
        tasks = [asyncio.create_task(client_loop(client, begin))]
        tasks += [asyncio.create_task(client_loop(client, step)) for _ in range(15)]
        watcher = asyncio.create_task(watch())
        while "second_at" not in replicas and time.perf_counter() < step + 300:
            await asyncio.sleep(1)
        await asyncio.sleep(AFTER_SECONDS)
        stop.set()
        await asyncio.gather(*tasks, watcher)
    before = [s for t, s, _ in latencies if t < step]
    one = [s for t, s, r in latencies if t >= step and r < 2]
    two = [s for t, s, r in latencies if r >= 2]
    return {
        "seconds_until_second_replica_serves": round(replicas.get("second_at", float("nan")) - step, 1),
        "p95_s_one_client": p95(before),
        "p95_s_sixteen_clients_one_replica": p95(one),
        "p95_s_sixteen_clients_two_replicas": p95(two),
        "calls": {"one_client": len(before), "sixteen_one_replica": len(one), "sixteen_two_replicas": len(two)},
    }


def main() -> None:
    var_dir = Path(tempfile.mkdtemp(prefix="bench-scale-"))
    env = {k: v for k, v in os.environ.items() if k not in ("PORT", "VAR_DIR")}
    env.setdefault("MODEL_CACHE_DIR", str(ROOT / "var" / "models"))
    os.environ["MODEL_CACHE_DIR"] = env["MODEL_CACHE_DIR"]
    platform = Platform(var_dir, 8760, env)
    platform.start()
    try:
        django_setup(var_dir)
        key = api_key(var_dir)
        step = asyncio.run(load_step(platform.url, key))
        print(json.dumps(step, indent=2), flush=True)
        cold = asyncio.run(cold_start(platform.url, key))
    finally:
        platform.stop()
    result = {"cold_start_to_first_token_s": round(cold, 1), **step}
    print(json.dumps(result, indent=2))
    (ROOT / "bench" / "results" / "serving_scale.json").write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
