"""Gateway overhead: the same trivial OpenAI-compatible upstream called directly and through the
gateway (API-key auth, rate limits, routing, usage ledger all on), at concurrency 1 and 32.
Prints requests/s and p50/p99 latency of both, and what the gateway adds.

Uses DATABASE_URL and REDIS_URL when set (production-like: PostgreSQL + Redis); otherwise the
embedded default (SQLite + file cache) in a temporary VAR_DIR. On PostgreSQL it compares, side by
side in one run, the ways a web process can hold database connections under ASGI: persistent
per-thread connections (CONN_MAX_AGE=60, the earlier setting), one connection per request
(CONN_MAX_AGE=0, Django's guidance for async servers) and a psycopg pool per process (the default).
Run: .venv/bin/python bench/gateway_overhead.py
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
CONNECTION_MODES = {
    "persistent, CONN_MAX_AGE=60 (before)": {"DB_POOL": "0", "DB_CONN_MAX_AGE": "60"},
    "per request, CONN_MAX_AGE=0": {"DB_POOL": "0", "DB_CONN_MAX_AGE": "0"},
    "psycopg pool (default)": {"DB_POOL": "1"},
}
REQUESTS = {1: int(os.environ.get("BENCH_REQUESTS_C1", "400")), 32: int(os.environ.get("BENCH_REQUESTS_C32", "2000"))}
BODY = {"model": "bench-model", "messages": [{"role": "user", "content": "Say hello"}], "max_tokens": 2}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait(url: str, process: subprocess.Popen) -> None:
    for _ in range(200):
        if process.poll() is not None:
            raise SystemExit(f"{url} exited")
        try:
            httpx.get(url, timeout=1)
            return
        except httpx.HTTPError:
            time.sleep(0.1)
    raise SystemExit(f"{url} did not start")


def manage(env: dict, *args: str) -> str:
    return subprocess.run(
        [sys.executable, "manage.py", *args], cwd=ROOT, env=env, check=True, capture_output=True, text=True
    ).stdout


async def load(url: str, headers: dict, concurrency: int, total: int) -> tuple[float, list[float]]:
    latencies: list[float] = []
    counter = iter(range(total))
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(limits=limits, timeout=30) as client:

        async def worker():
            for _ in counter:
                started = time.perf_counter()
                response = await client.post(url, json=BODY, headers=headers)
                latencies.append(time.perf_counter() - started)
                assert response.status_code == 200, response.text

        for _ in range(min(concurrency, 20)):  # warm-up: connections, caches
            await client.post(url, json=BODY, headers=headers)
        started = time.perf_counter()
        await asyncio.gather(*[worker() for _ in range(concurrency)])
        elapsed = time.perf_counter() - started
    return total / elapsed, latencies


def quantile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100)[int(q * 100) - 1] * 1000


def bench_env(prefix: str) -> dict:
    """The platform's processes for a gateway benchmark: the given database (or a fresh embedded
    one), rate limits out of the way, quiet logs."""
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'platform'}{os.pathsep}{ROOT}"}
    if not env.get("DATABASE_URL"):
        env["VAR_DIR"] = tempfile.mkdtemp(prefix=prefix)
    env.update(
        RATE_LIMIT_KEY_RPM="10000000",
        RATE_LIMIT_ORG_RPM="10000000",
        RATE_LIMIT_KEY_TPM="1000000000",
        RATE_LIMIT_ORG_TPM="1000000000",
        LOG_LEVEL="WARNING",
    )
    return env


def register_upstream(env: dict, port: int) -> None:
    """The benchmark's one replica of bench-model: replicas left by earlier runs on the same database
    (their upstreams long gone) are removed first, or the gateway would try them and fail over."""
    manage(env, "shell", "--no-imports", "-c", "from serving.models import Backend; "
           "Backend.objects.filter(name__startswith='bench-').delete()")  # fmt: skip
    manage(env, "register_backend", f"bench-{port}", "--url", f"http://127.0.0.1:{port}", "--model", "bench-model")


def main() -> None:
    env = bench_env("bench-gateway-")
    up_port = free_port()
    upstream = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "bench.trivial_upstream:app",
            "--port",
            str(up_port),
            "--no-access-log",
            "--log-level",
            "warning",
        ],
        cwd=ROOT,
        env=env,
    )
    manage(env, "migrate", "-v0")
    manage(
        env,
        "shell",
        "--no-imports",
        "-c",
        "from catalog.models import BaseModel; BaseModel.objects.update_or_create(id='bench-model', defaults=dict("
        "display_name='bench', family='bench', context_length=4096, source={'format': 'gguf', 'path': '/x.gguf'}))",
    )
    slug = f"bench{int(time.time())}"
    manage(env, "create_org", slug, "--owner", f"{slug}@example.com")
    key = manage(env, "create_api_key", slug, "--name", "bench").strip().splitlines()[-1]
    register_upstream(env, up_port)
    store = ("PostgreSQL" if "postgres" in env.get("DATABASE_URL", "") else "SQLite") + (
        " + Redis" if env.get("REDIS_URL") else " + file cache"
    )
    modes = CONNECTION_MODES if store.startswith("PostgreSQL") else {"embedded": {}}
    figures = {"store": store, "cores": os.cpu_count(), "results": []}
    try:
        wait(f"http://127.0.0.1:{up_port}/health", upstream)
        for mode, overrides in modes.items():
            web_port = free_port()
            web = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "uvicorn",
                    "maas.asgi:application",
                    "--port",
                    str(web_port),
                    "--no-access-log",
                    "--log-level",
                    "warning",
                ],
                cwd=ROOT,
                env={**env, **overrides},
            )
            try:
                wait(f"http://127.0.0.1:{web_port}/healthz", web)
                for concurrency, total in REQUESTS.items():
                    figures["results"].append(measure(mode, up_port, web_port, key, concurrency, total))
            finally:
                web.terminate()
                web.wait(10)
        print(json.dumps(figures, indent=2))
        (ROOT / "bench" / "results" / "gateway_overhead.json").write_text(json.dumps(figures, indent=2) + "\n")
    finally:
        upstream.terminate()
        upstream.wait(10)


def measure(mode: str, up_port: int, web_port: int, key: str, concurrency: int, total: int) -> dict:
    direct_rps, direct = asyncio.run(load(f"http://127.0.0.1:{up_port}/v1/chat/completions", {}, concurrency, total))
    gateway_rps, through = asyncio.run(
        load(
            f"http://127.0.0.1:{web_port}/v1/chat/completions",
            {"Authorization": f"Bearer {key}"},
            concurrency,
            total,
        )
    )
    row = {
        "connections": mode,
        "concurrency": concurrency,
        "requests": total,
        "direct_rps": round(direct_rps),
        "gateway_rps": round(gateway_rps),
        "direct_p50_ms": round(quantile(direct, 0.50), 2),
        "gateway_p50_ms": round(quantile(through, 0.50), 2),
        "direct_p99_ms": round(quantile(direct, 0.99), 2),
        "gateway_p99_ms": round(quantile(through, 0.99), 2),
    }
    row["added_p50_ms"] = round(row["gateway_p50_ms"] - row["direct_p50_ms"], 2)
    row["added_p99_ms"] = round(row["gateway_p99_ms"] - row["direct_p99_ms"], 2)
    print(json.dumps(row), flush=True)
    return row


if __name__ == "__main__":
    main()
