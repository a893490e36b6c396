"""The gateway with budgets on and off, in one run: what holding a request's worst-case cost
before forwarding (drawn from the web process's bulk hold, billing/holds.py) and settling it with
the ledger row costs per request.

One web process, one trivial upstream (bench/trivial_upstream.py), one priced model. "On": a
prepaid organization with ample credit (every request reserves and settles). "Off": an invoiced
organization without limits (no budget applies: nothing is reserved). Rounds alternate on and off,
so that drift of the machine hits both. Goal: at most 1 ms added at p50, at least 90 % of the
throughput.

Run: .venv/bin/python bench/gateway_budgets.py  (uses DATABASE_URL/REDIS_URL when set)
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.gateway_overhead import bench_env, free_port, load, manage, quantile, register_upstream, wait  # noqa: E402

ROUNDS = int(os.environ.get("BENCH_ROUNDS", "2"))
REQUESTS = {1: int(os.environ.get("BENCH_REQUESTS_C1", "400")), 32: int(os.environ.get("BENCH_REQUESTS_C32", "2000"))}
SETUP = """
from billing import budgets, services
from catalog.models import BaseModel
from tenancy.audit import Actor
from tenancy.models import Organization
BaseModel.objects.update_or_create(id='bench-model', defaults=dict(display_name='bench', family='bench',
    context_length=4096, source={'format': 'gguf', 'path': '/x.gguf'}))
services.set_price(model='bench-model', organization_id=None, input_per_million='0.5', output_per_million='1.5',
    training_per_million='0', actor=Actor())
on, off = (Organization.objects.get(slug=s) for s in ('SLUG-on', 'SLUG-off'))
budgets.ensure_account(on.pk)
services.grant_credits(on.pk, '1000000', reason='benchmark', actor=Actor())
services.configure_account(off.pk, mode='invoiced', actor=Actor())
"""


def main() -> None:
    env = bench_env("bench-budgets-")
    up_port, web_port = free_port(), free_port()
    serve = [sys.executable, "-m", "uvicorn", "--no-access-log", "--log-level", "warning", "--port"]
    upstream = subprocess.Popen([*serve, str(up_port), "bench.trivial_upstream:app"], cwd=ROOT, env=env)
    manage(env, "migrate", "-v0")
    slug = f"budgets{int(time.time())}"
    keys = {}
    for mode in ("on", "off"):
        manage(env, "create_org", f"{slug}-{mode}", "--owner", f"{slug}-{mode}@example.com")
        keys[mode] = manage(env, "create_api_key", f"{slug}-{mode}", "--name", "bench").strip().splitlines()[-1]
    manage(env, "shell", "--no-imports", "-c", SETUP.replace("SLUG", slug))
    register_upstream(env, up_port)
    web = subprocess.Popen([*serve, str(web_port), "maas.asgi:application"], cwd=ROOT, env=env)
    rows = []
    try:
        wait(f"http://127.0.0.1:{up_port}/health", upstream)
        wait(f"http://127.0.0.1:{web_port}/healthz", web)
        url = f"http://127.0.0.1:{web_port}/v1/chat/completions"
        for round_ in range(ROUNDS):
            for concurrency, total in REQUESTS.items():
                for mode in ("on", "off") if round_ % 2 == 0 else ("off", "on"):
                    rps, latencies = asyncio.run(
                        load(url, {"Authorization": f"Bearer {keys[mode]}"}, concurrency, total)
                    )
                    row = {
                        "round": round_ + 1,
                        "budgets": mode,
                        "concurrency": concurrency,
                        "rps": round(rps),
                        "p50_ms": round(quantile(latencies, 0.5), 2),
                        "p99_ms": round(quantile(latencies, 0.99), 2),
                    }
                    print(json.dumps(row), flush=True)
                    rows.append(row)
    finally:
        web.terminate()
        web.wait(30)
        upstream.terminate()
        upstream.wait(10)
    summary = []
    for concurrency in REQUESTS:
        on = [r for r in rows if r["budgets"] == "on" and r["concurrency"] == concurrency]
        off = [r for r in rows if r["budgets"] == "off" and r["concurrency"] == concurrency]

        def mean(values):
            return sum(values) / len(values)

        summary.append(
            {
                "concurrency": concurrency,
                "added_p50_ms": round(mean([r["p50_ms"] for r in on]) - mean([r["p50_ms"] for r in off]), 2),
                "throughput_on_over_off": round(mean([r["rps"] for r in on]) / mean([r["rps"] for r in off]), 3),
            }
        )
    figures = {
        "store": "PostgreSQL" if "postgres" in env.get("DATABASE_URL", "") else "SQLite",
        "rows": rows,
        "summary": summary,
    }
    print(json.dumps(summary, indent=2))
    (ROOT / "bench" / "results" / "gateway_budgets.json").write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
