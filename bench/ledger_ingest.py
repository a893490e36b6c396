"""Ledger ingest: usage records through the metering outbox into the ledger, sustained.

A producer process appends usage records to the spool at BENCH_RATE a second, for DURATION seconds
(sealing its file every quarter second, as a web process's drainer does); this process drains the
spool into the ledger meanwhile (billing.services.drain_outbox: batched INSERTs, priced, budgets
settled). Printed: records produced and ingested per second, and the totals checked afterwards —
every record in the ledger once, token and cost sums equal to what was produced.

Run: DATABASE_URL=postgres://... .venv/bin/python bench/ledger_ingest.py  (goal >= 5,000 records/s)
"""

from __future__ import annotations

import json
import multiprocessing
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "platform"), str(ROOT)]
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "maas.settings")
if not os.environ.get("DATABASE_URL"):
    os.environ["VAR_DIR"] = tempfile.mkdtemp(prefix="bench-ledger-")
os.environ.setdefault("METERING_SPOOL_DIR", tempfile.mkdtemp(prefix="bench-spool-"))
os.environ.setdefault("LOG_LEVEL", "WARNING")
DURATION = float(os.environ.get("BENCH_SECONDS", "60"))
RATE = int(os.environ.get("BENCH_RATE", "8000"))  # records/s the producer offers
PRICE = [None, 100, 200, 1000]  # nano-units per token, carried by each record as the gateway does


def produce(organization_id: int, key_id: str, seconds: float, counts) -> None:
    import django

    django.setup()
    from billing import outbox

    spool = outbox.Spool(Path(os.environ["METERING_SPOOL_DIR"]))
    started = last_seal = time.monotonic()
    n = prompt = completion = 0
    while time.monotonic() - started < seconds:
        for _ in range(500):
            p, c = 20 + n % 50, 1 + n % 200
            spool.append(
                {
                    "request_id": f"bench_{os.getpid()}_{n}",
                    "organization_id": organization_id,
                    "api_key_id": key_id,
                    "route": "chat.completions",
                    "model": "smollm2-135m-instruct",
                    "base_model": "smollm2-135m-instruct",
                    "prompt_tokens": p,
                    "completion_tokens": c,
                    "price": PRICE,
                    "status_code": 200,
                    "outcome": "ok",
                    "latency_ms": 5,
                    "created_at": time.time(),
                }
            )
            n, prompt, completion = n + 1, prompt + p, completion + c
        ahead = n / RATE - (time.monotonic() - started)
        if ahead > 0:
            time.sleep(ahead)
        if time.monotonic() - last_seal > 0.25:
            spool.seal()
            last_seal = time.monotonic()
    spool.seal()
    counts.update(produced=n, prompt=prompt, completion=completion, seconds=time.monotonic() - started)


def main() -> None:
    import django

    django.setup()
    from django.core.management import call_command
    from django.db.models import Count, Sum

    from billing import services
    from billing.models import UsageEvent
    from tenancy import services as tenancy
    from tenancy.audit import Actor

    call_command("migrate", verbosity=0)
    slug = f"ingest{int(time.time())}"
    _, org = tenancy.sign_up(
        email=f"{slug}@example.com", password=os.urandom(12).hex(), organization_name=slug, actor=Actor()
    )
    services.configure_account(org.pk, mode="invoiced", actor=Actor())
    key = tenancy.create_api_key(organization_id=org.pk, name="bench", actor=Actor())
    key_id = str(key.key.pk)
    manager = multiprocessing.Manager()
    counts = manager.dict()
    producer = multiprocessing.Process(target=produce, args=(org.pk, key_id, DURATION, counts))
    started = time.monotonic()
    producer.start()
    drained, samples = 0, []
    while producer.is_alive():
        drained += services.drain_outbox()
        samples.append((time.monotonic() - started, drained))
        time.sleep(0.05)
    producer.join()
    while True:  # what is left when the producer stops
        more = services.drain_outbox()
        drained += more
        if not more:
            break
    elapsed = time.monotonic() - started
    totals = UsageEvent.all_orgs.filter(organization=org).aggregate(
        rows=Count("id"), prompt=Sum("prompt_tokens"), completion=Sum("completion_tokens"), cost=Sum("cost")
    )
    expected_cost = counts["prompt"] * PRICE[1] + counts["completion"] * PRICE[2]
    in_window = [d for t, d in samples if t <= counts["seconds"]]
    figures = {
        "database": django.db.connection.vendor,
        "seconds": round(counts["seconds"], 1),
        "produced": counts["produced"],
        "produced_per_s": round(counts["produced"] / counts["seconds"]),
        "ingested_during_production_per_s": round((in_window[-1] if in_window else 0) / counts["seconds"]),
        "backlog_when_production_stopped": counts["produced"] - (in_window[-1] if in_window else 0),
        "ingested_overall_per_s": round(drained / elapsed),
        "ledger_rows": totals["rows"],
        "lost": counts["produced"] - totals["rows"],
        "token_sums_equal": (totals["prompt"], totals["completion"]) == (counts["prompt"], counts["completion"]),
        "cost_sum_equal": totals["cost"] == expected_cost,
    }
    print(json.dumps(figures, indent=2))
    (ROOT / "bench" / "results" / "ledger_ingest.json").write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
