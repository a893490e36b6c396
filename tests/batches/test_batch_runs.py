"""Batches run to their end by a real batch runner process, on the real runtime behind a live web
process, through the official openai SDK: every custom_id answered once, in the synchronous
response's shape, billed once at the batch price; a cancelled batch bills only what it answered; a
runner killed mid-batch leaves nothing run twice in the output or the ledger."""

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import openai
import pytest
from django.conf import settings

from billing import money
from billing import services as billing
from billing.models import UsageEvent
from tenancy.audit import Actor
from tenancy.roles import Scope
from tests.conftest import DEMO_MODEL, REPO, _database_url, key_client, nothing_held

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True, serialized_rollback=True)]
BATCH_INPUT, BATCH_OUTPUT = 500, 1000  # nano-units a token: half of 1 and 2 per million
EMBEDDING = "all-minilm-l6-v2"


class RunnerProcess:
    def __init__(self, log_path: Path, **env):
        self.log_path = log_path
        self.process = subprocess.Popen(
            [sys.executable, "manage.py", "batch_runner"],
            cwd=REPO,
            env={
                **os.environ,
                "DATABASE_URL": _database_url(),
                "VAR_DIR": str(settings.VAR_DIR),
                "PYTHONPATH": f"{REPO / 'platform'}{os.pathsep}{REPO}",
                "GATEWAY_ROUTE_CACHE_SECONDS": "0",
                **{k: str(v) for k, v in env.items()},
            },
            stdout=log_path.open("a"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def log(self) -> str:
        return self.log_path.read_text()

    def stop(self, sig=signal.SIGTERM) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, sig)
            self.process.wait(30)


@pytest.fixture
def stack(live_web, runtime_server, celery_worker, make_tenant, tmp_path):
    runtime_server.register()
    billing.set_price(
        model=DEMO_MODEL,
        organization_id=None,
        input_per_million="1",
        output_per_million="2",
        training_per_million="0",
        actor=Actor(),
    )
    runners = []

    def runner(**env) -> RunnerProcess:
        started = RunnerProcess(tmp_path / "runner.log", **env)
        runners.append(started)
        return started

    yield live_web, make_tenant("batches"), runner
    for started in runners:
        started.stop(signal.SIGKILL)


def sdk(web, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=web.url + "/v1", api_key=key, max_retries=0, timeout=60)


def lines(count: int, **body) -> bytes:
    rows = [
        {
            "custom_id": f"question-{i}",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {"model": DEMO_MODEL, "messages": [{"role": "user", "content": f"What is {i} plus {i}?"}], **body},
        }
        for i in range(count)
    ]
    return "".join(json.dumps(row) + "\n" for row in rows).encode()


def wait_for(client: openai.OpenAI, batch_id: str, statuses: set, runner: RunnerProcess, seconds: float = 400):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        batch = client.batches.retrieve(batch_id)
        if batch.status in statuses:
            return batch
        time.sleep(0.5)
    raise AssertionError(f"batch still {batch.status} ({batch.request_counts}): {runner.log()[-3000:]}")


def output_lines(client: openai.OpenAI, file_id: str | None) -> list[dict]:
    if file_id is None:
        return []
    return [json.loads(line) for line in client.files.content(file_id).text.splitlines()]


def batch_rows(tenant) -> list[UsageEvent]:
    return list(UsageEvent.all_orgs.filter(organization=tenant.org, route="batch.chat.completions"))


def costs_api_total(tenant) -> int:
    client = key_client(tenant.key(scopes=[Scope.BILLING_READ]))
    # The window ends after the last row (end_time is exclusive, and rows of this very second count).
    now = int(time.time())
    window = {"start_time": now - 3600, "end_time": now + 60, "group_by": "line_item"}
    answer = client.get("/v1/organization/costs", window)
    assert answer.status_code == 200, answer.content
    total, items = 0, set()
    for bucket in answer.json()["data"]:
        for result in bucket["results"]:
            total += money.from_decimal(result["amount"]["exact"])
            items.add(result["line_item"])
    assert items <= {f"{DEMO_MODEL}, batch input", f"{DEMO_MODEL}, batch output"}, items
    return total


def test_the_sdk_runs_a_200_line_batch_to_completed_each_custom_id_once_at_the_batch_price(stack):
    web, tenant, runner = stack
    started = runner()
    client = sdk(web, tenant.key())
    file = client.files.create(file=("questions.jsonl", lines(200, max_tokens=8)), purpose="batch")
    batch = client.batches.create(input_file_id=file.id, endpoint="/v1/chat/completions", completion_window="24h")
    assert batch.status in ("validating", "in_progress")
    batch = wait_for(client, batch.id, {"completed", "failed", "expired", "cancelled"}, started)
    assert batch.status == "completed", batch
    counts = batch.request_counts.model_dump()
    assert counts == {"total": 200, "completed": 200, "failed": 0}, output_lines(client, batch.error_file_id)[:2]
    assert batch.error_file_id is None and batch.completed_at >= batch.finalizing_at >= batch.in_progress_at

    answers = output_lines(client, batch.output_file_id)
    assert Counter(a["custom_id"] for a in answers) == Counter(f"question-{i}" for i in range(200))
    for answer in answers:
        body = answer["response"]["body"]
        assert answer["response"]["status_code"] == 200 and answer["error"] is None
        assert (body["object"], body["model"]) == ("chat.completion", DEMO_MODEL)
        assert body["choices"][0]["message"]["content"] and body["usage"]["completion_tokens"] <= 8
    assert client.files.retrieve(batch.output_file_id).purpose == "batch_output"

    rows = batch_rows(tenant)
    assert len(rows) == 200 and len({r.request_id for r in rows}) == 200
    by_request = {a["response"]["request_id"]: a["response"]["body"]["usage"] for a in answers}
    for row in rows:
        usage = by_request[row.request_id]
        assert (row.prompt_tokens, row.completion_tokens) == (usage["prompt_tokens"], usage["completion_tokens"])
        assert row.cost == row.prompt_tokens * BATCH_INPUT + row.completion_tokens * BATCH_OUTPUT
    assert (batch.usage.input_tokens, batch.usage.output_tokens) == (
        sum(r.prompt_tokens for r in rows),
        sum(r.completion_tokens for r in rows),
    )
    assert costs_api_total(tenant) == sum(r.cost for r in rows) > 0
    assert nothing_held(tenant.org)


def test_a_cancelled_batch_bills_only_what_it_answered(stack):
    web, tenant, runner = stack
    started = runner(BATCH_RUNNER_CONCURRENCY=2)
    client = sdk(web, tenant.key())
    file = client.files.create(file=("questions.jsonl", lines(40, max_tokens=24)), purpose="batch")
    batch = client.batches.create(input_file_id=file.id, endpoint="/v1/chat/completions", completion_window="24h")
    deadline = time.monotonic() + 120
    while client.batches.retrieve(batch.id).request_counts.completed < 2:
        assert time.monotonic() < deadline, started.log()[-3000:]
        time.sleep(0.2)
    first, second = client.batches.cancel(batch.id), client.batches.cancel(batch.id)
    assert first.status == "cancelling" and second.status in ("cancelling", "cancelled")
    assert first.cancelling_at == second.cancelling_at
    batch = wait_for(client, batch.id, {"cancelled"}, started, 120)
    assert client.batches.cancel(batch.id).status == "cancelled"  # and once ended, the same again

    answered = output_lines(client, batch.output_file_id)
    not_run = output_lines(client, batch.error_file_id)
    done = batch.request_counts.completed
    assert 2 <= done < 40 and len(answered) == done and len(not_run) == 40 - done
    assert {a["error"]["code"] for a in not_run} == {"batch_cancelled"}
    assert {a["custom_id"] for a in answered}.isdisjoint(a["custom_id"] for a in not_run)
    rows = batch_rows(tenant)
    assert sorted(r.request_id for r in rows) == sorted(a["response"]["request_id"] for a in answered)
    assert costs_api_total(tenant) == sum(r.cost for r in rows)
    assert nothing_held(tenant.org)


def test_a_runner_killed_mid_batch_runs_nothing_twice_and_another_finishes_it(stack):
    web, tenant, runner = stack
    first = runner(BATCH_RUNNER_CONCURRENCY=4, BATCH_LEASE_SECONDS=3)
    client = sdk(web, tenant.key())
    file = client.files.create(file=("questions.jsonl", lines(30, max_tokens=24)), purpose="batch")
    batch = client.batches.create(input_file_id=file.id, endpoint="/v1/chat/completions", completion_window="24h")
    deadline = time.monotonic() + 120
    while client.batches.retrieve(batch.id).request_counts.completed < 3:
        assert time.monotonic() < deadline, first.log()[-3000:]
        time.sleep(0.1)
    first.stop(signal.SIGKILL)  # mid-request: its leased requests are left running
    killed_at = client.batches.retrieve(batch.id).request_counts.completed
    assert killed_at < 30
    second = runner(BATCH_RUNNER_CONCURRENCY=4, BATCH_LEASE_SECONDS=3)
    batch = wait_for(client, batch.id, {"completed", "failed"}, second, 300)
    assert batch.status == "completed" and batch.request_counts.completed == 30

    answers = output_lines(client, batch.output_file_id)
    assert Counter(a["custom_id"] for a in answers) == Counter(f"question-{i}" for i in range(30))
    rows = batch_rows(tenant)
    assert len(rows) == 30 and len({r.request_id for r in rows}) == 30
    assert costs_api_total(tenant) == sum(r.cost for r in rows)
    assert nothing_held(tenant.org)


def test_an_embeddings_batch_starts_its_model_from_zero_and_bills_at_the_batch_price(
    live_web, node_agent, celery_worker, make_tenant, tmp_path
):
    from catalog.models import BaseModel

    BaseModel.objects.filter(pk=DEMO_MODEL).update(min_replicas=0)  # only the embedding model runs here
    tenant = make_tenant("embedding-batches")
    started = RunnerProcess(tmp_path / "runner.log")
    try:
        client = sdk(live_web, tenant.key())
        texts = ["cat", "kitten", "car", "a small cat", "a red car"]
        rows = [
            {"custom_id": f"t{i}", "method": "POST", "url": "/v1/embeddings", "body": {"model": EMBEDDING, "input": t}}
            for i, t in enumerate(texts)
        ]
        content = "".join(json.dumps(row) + "\n" for row in rows).encode()
        file = client.files.create(file=("texts.jsonl", content), purpose="batch")
        batch = client.batches.create(input_file_id=file.id, endpoint="/v1/embeddings", completion_window="24h")
        batch = wait_for(client, batch.id, {"completed", "failed"}, started, 300)
    finally:
        started.stop(signal.SIGKILL)
    assert batch.status == "completed" and batch.request_counts.completed == 5
    answers = {a["custom_id"]: a["response"]["body"] for a in output_lines(client, batch.output_file_id)}
    vectors = {texts[int(k[1:])]: v["data"][0]["embedding"] for k, v in answers.items()}
    assert all(len(v) == 384 for v in vectors.values())
    direct = client.embeddings.create(model=EMBEDDING, input="kitten", encoding_format="float").data[0].embedding
    assert max(abs(a - b) for a, b in zip(direct, vectors["kitten"], strict=True)) < 1e-5
    billed = list(UsageEvent.all_orgs.filter(organization=tenant.org, route="batch.embeddings"))
    assert len(billed) == 5
    for row in billed:
        usage = answers[f"t{int(row.request_id.rsplit(':', 1)[1]) - 1}"]["usage"]
        # The embedding model's list price is 20 nano-units a token: 10 in a batch.
        assert row.prompt_tokens == usage["prompt_tokens"] and row.cost == 10 * row.prompt_tokens
    assert nothing_held(tenant.org)


def test_a_batch_on_vllm_runs_to_completed_at_its_lower_priority(
    live_web, node_agent, celery_worker, make_tenant, tmp_path
):
    from serving import autoscale
    from tests.serving.test_pool_replicas import replicas, wait_until
    from tests.serving.test_vllm import INSTALLED, KEY, serve_with_vllm

    if not INSTALLED and os.environ.get("REQUIRE_VLLM") != "1":
        pytest.skip("vLLM is not installed (make vllm)")
    serve_with_vllm()  # started with priority scheduling; the batch's requests carry priority 1
    autoscale.scale_all()
    wait_until(lambda: replicas(KEY, state="ready"), 600, f"a vLLM replica: {node_agent.log()[-3000:]}")
    tenant = make_tenant("vllm-batches")
    started = RunnerProcess(tmp_path / "runner.log")
    try:
        client = sdk(live_web, tenant.key())
        file = client.files.create(file=("questions.jsonl", lines(10, max_tokens=8)), purpose="batch")
        batch = client.batches.create(input_file_id=file.id, endpoint="/v1/chat/completions", completion_window="24h")
        batch = wait_for(client, batch.id, {"completed", "failed"}, started, 300)
    finally:
        started.stop(signal.SIGKILL)
    assert batch.status == "completed" and batch.request_counts.completed == 10, output_lines(
        client, batch.error_file_id
    )[:2]
    answers = output_lines(client, batch.output_file_id)
    assert sorted(a["custom_id"] for a in answers) == sorted(f"question-{i}" for i in range(10))
    assert all(a["response"]["body"]["choices"][0]["message"]["content"] for a in answers)
    assert len(batch_rows(tenant)) == 10
