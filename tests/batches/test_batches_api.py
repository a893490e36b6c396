"""/v1/batches at creation and cancel, before any request runs: a bad line fails the batch naming
it, a model the organization may not call is a 404, a file the budget cannot hold is a 429, the
worst case is held at the batch price, and cancelling twice gives the same answer."""

import json
from datetime import timedelta

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.utils import timezone

from batches.models import Batch, BatchRequest
from billing import services as billing
from billing.models import Account, Reservation
from tenancy import scope
from tenancy.audit import Actor
from tests.conftest import DEMO_MODEL, key_client
from tests.fine_tuning.test_batch_files import chat_line, jsonl

pytestmark = pytest.mark.django_db(transaction=True, serialized_rollback=True)


@pytest.fixture
def priced():
    billing.set_price(
        model=DEMO_MODEL,
        organization_id=None,
        input_per_million="1",
        output_per_million="2",
        training_per_million="0",
        actor=Actor(),
    )


def upload(client, lines: list, name: str = "batch.jsonl") -> dict:
    file = SimpleUploadedFile(name, jsonl(lines), content_type="application/jsonl")
    answer = client.post("/v1/files", {"file": file, "purpose": "batch"}, format="multipart")
    assert answer.status_code == 200, answer.content
    return answer.json()


def create(client, file_id: str, endpoint: str = "/v1/chat/completions", **extra):
    body = {"input_file_id": file_id, "endpoint": endpoint, "completion_window": "24h", **extra}
    return client.post("/v1/batches", json.dumps(body), content_type="application/json")


def test_a_batch_holds_its_worst_case_at_the_batch_price_and_lists(tenant_a, priced):
    client = key_client(tenant_a.key())
    file = upload(client, [chat_line(i, max_tokens=10) for i in range(3)])
    answer = create(client, file["id"], metadata={"run": "nightly"})
    assert answer.status_code == 200, answer.content
    batch = answer.json()
    assert (batch["object"], batch["status"], batch["endpoint"], batch["model"]) == (
        "batch",
        "in_progress",
        "/v1/chat/completions",
        DEMO_MODEL,
    )
    assert batch["request_counts"] == {"total": 3, "completed": 0, "failed": 0}
    assert batch["metadata"] == {"run": "nightly"} and batch["errors"] is None
    assert batch["expires_at"] - batch["created_at"] == 24 * 3600
    assert list(BatchRequest.all_orgs.order_by("line").values_list("line", "custom_id")) == [
        (1, "request-0"),
        (2, "request-1"),
        (3, "request-2"),
    ]
    # Each line as the gateway bounds it: the prompt's bytes (its text and the JSON of its tool
    # fields, here none), +8 a message, +64; 10 completion tokens; at half of 1 and 2 per million
    # (nano-units: 500 and 1000 a token).
    prompt = len(b"Say 0") + len(b"[null,[null],null]") + 8 + 64
    hold = Reservation.all_orgs.get(request_id=f"batch:{batch['id']}")
    assert hold.amount == 3 * (prompt * 500 + 10 * 1000)
    assert Account.all_orgs.get(organization_id=tenant_a.org.pk).reserved == hold.amount

    second = create(client, file["id"]).json()
    listed = client.get("/v1/batches?limit=1").json()
    assert [b["id"] for b in listed["data"]] == [second["id"]] and listed["has_more"] is True
    rest = client.get(f"/v1/batches?limit=5&after={second['id']}").json()
    assert [b["id"] for b in rest["data"]] == [batch["id"]] and rest["has_more"] is False
    assert client.get(f"/v1/batches/{batch['id']}").json()["id"] == batch["id"]


def test_a_bad_line_7_fails_the_batch_naming_it(tenant_a, priced):
    client = key_client(tenant_a.key())
    lines = [chat_line(i) for i in range(6)] + [chat_line(6, temperature=5), chat_line(7)]
    file = upload(client, lines)
    assert client.get(f"/v1/files/{file['id']}").json()["status"] == "error"
    batch = create(client, file["id"]).json()
    assert batch["status"] == "failed" and batch["failed_at"]
    [error] = batch["errors"]["data"]
    assert error["line"] == 7 and "temperature" in error["message"]
    assert not Reservation.all_orgs.exists() and not BatchRequest.all_orgs.exists()


def test_a_line_its_model_refuses_fails_the_batch_at_creation(tenant_a, priced):
    from catalog.models import BaseModel

    BaseModel.objects.filter(pk=DEMO_MODEL).update(features=[])  # no tools, no structured outputs
    client = key_client(tenant_a.key())
    schema = {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}}
    file = upload(client, [chat_line(0), chat_line(1, response_format=schema)])
    batch = create(client, file["id"]).json()
    assert batch["status"] == "failed"
    [error] = batch["errors"]["data"]
    assert (error["line"], error["code"], error["param"]) == (2, "unsupported_parameter", "response_format")


def test_a_model_the_organization_may_not_call_is_a_404(tenant_a, tenant_b, priced):
    client = key_client(tenant_a.key())
    file = upload(client, [chat_line(0), chat_line(1, model="ft:smollm2:someone-else:abc")])
    answer = create(client, file["id"])
    assert answer.status_code == 404
    assert answer.json()["error"]["code"] == "model_not_found"
    assert not Batch.all_orgs.exists() and not Reservation.all_orgs.exists()
    # Another organization's file is a 404 too.
    assert create(key_client(tenant_b.key()), file["id"]).status_code == 404


def test_a_file_the_budget_cannot_hold_is_a_429_and_holds_nothing(tenant_a, priced):
    billing.set_price(
        model=DEMO_MODEL,
        organization_id=None,
        input_per_million="1000",
        output_per_million="1000",
        training_per_million="0",
        actor=Actor(),
    )
    client = key_client(tenant_a.key())
    # Five lines of at least $4 each: more than the $5 credit.
    file = upload(client, [chat_line(i, max_tokens=4000) for i in range(5)])
    answer = create(client, file["id"])
    assert answer.status_code == 429, answer.content
    assert answer.json()["error"]["code"] == "insufficient_quota"
    assert not Batch.all_orgs.exists() and not Reservation.all_orgs.exists()
    assert not Account.all_orgs.filter(organization_id=tenant_a.org.pk, reserved__gt=0).exists()


def test_bad_arguments_name_the_parameter(tenant_a, priced):
    client = key_client(tenant_a.key())
    file = upload(client, [chat_line(0)])
    cases = [
        ({"completion_window": "1h"}, "completion_window"),
        ({"endpoint": "/v1/moderations"}, "endpoint"),
        ({"endpoint": "/v1/embeddings"}, "endpoint"),  # the file's lines call chat
        ({"metadata": {"k": 1}}, "metadata"),
        ({"output_expires_after": {"anchor": "created_at", "seconds": 3600}}, "output_expires_after"),
    ]
    for extra, param in cases:
        answer = create(client, file["id"], **extra)
        assert answer.status_code == 400 and answer.json()["error"]["param"] == param, (extra, answer.content)
    assert create(client, "file-nope").status_code == 404
    assert client.get("/v1/batches/batch_nope").status_code == 404


def test_cancelling_twice_gives_the_same_answer_and_another_org_gets_404(tenant_a, tenant_b, priced):
    client = key_client(tenant_a.key())
    batch = create(client, upload(client, [chat_line(0)])["id"]).json()
    assert key_client(tenant_b.key()).post(f"/v1/batches/{batch['id']}/cancel").status_code == 404
    first = client.post(f"/v1/batches/{batch['id']}/cancel")
    second = client.post(f"/v1/batches/{batch['id']}/cancel")
    assert first.status_code == second.status_code == 200
    assert first.json()["status"] == second.json()["status"] == "cancelling"
    assert first.json()["cancelling_at"] == second.json()["cancelling_at"]
    from tenancy.models import AuditLog

    assert AuditLog.all_orgs.filter(action="batch.cancelled", target_id=batch["id"]).count() == 1


def one_pass() -> None:
    """One pass of a batch runner (no replica is needed for what these tests run)."""
    import asyncio

    from batches.runner import Runner

    asyncio.run(Runner(owner="test-runner").step())


def test_a_batch_whose_window_ends_expires_with_its_requests_in_the_error_file(tenant_a, priced):
    client = key_client(tenant_a.key())
    batch = create(client, upload(client, [chat_line(i, max_tokens=4) for i in range(3)])["id"]).json()
    Batch.all_orgs.filter(pk=batch["id"]).update(expires_at=timezone.now() - timedelta(seconds=1))
    one_pass()
    expired = client.get(f"/v1/batches/{batch['id']}").json()
    assert expired["status"] == "expired" and expired["expired_at"] and expired["output_file_id"] is None
    content = b"".join(client.get(f"/v1/files/{expired['error_file_id']}/content").streaming_content)
    errors = [json.loads(line) for line in content.splitlines()]
    assert [(e["custom_id"], e["error"]["code"], e["response"]) for e in errors] == [
        (f"request-{i}", "batch_expired", None) for i in range(3)
    ]
    assert not Reservation.all_orgs.exists()
    assert Account.all_orgs.get(organization_id=tenant_a.org.pk).reserved == 0


def test_a_batch_created_while_its_file_is_validated_starts_once_it_is(tenant_a, priced, monkeypatch):
    from fine_tuning import services as files
    from fine_tuning import tasks

    monkeypatch.setattr(tasks.validate_file_task, "delay", lambda *args: None)  # the worker has not got to it
    client = key_client(tenant_a.key())
    waiting = upload(client, [chat_line(i, max_tokens=4) for i in range(2)])
    broken = upload(client, [chat_line(0), '{"custom_id": "cut off'])
    first, second = (create(client, f["id"]).json() for f in (waiting, broken))
    assert first["status"] == second["status"] == "validating"
    one_pass()
    assert client.get(f"/v1/batches/{first['id']}").json()["status"] == "validating"
    with scope.organization(tenant_a.org.pk):
        files.validate_file(waiting["id"])
        files.validate_file(broken["id"])
    one_pass()
    started, failed = (client.get(f"/v1/batches/{b['id']}").json() for b in (first, second))
    assert started["status"] == "in_progress" and started["request_counts"]["total"] == 2
    assert Reservation.all_orgs.filter(request_id=f"batch:{first['id']}").exists()
    assert failed["status"] == "failed" and failed["errors"]["data"][0]["line"] == 2


def test_the_console_lists_batches_with_their_result_files(tenant_a, tenant_b, priced):
    from django.test import Client

    client = key_client(tenant_a.key())
    batch = create(client, upload(client, [chat_line(i, max_tokens=4) for i in range(2)])["id"]).json()
    failed = create(client, upload(client, [chat_line(0, temperature=9)])["id"]).json()
    Batch.all_orgs.filter(pk=batch["id"]).update(expires_at=timezone.now() - timedelta(seconds=1))
    one_pass()
    error_file = Batch.all_orgs.get(pk=batch["id"]).error_file_id
    console = Client()
    console.force_login(tenant_a.owner)
    page = console.get(f"/orgs/{tenant_a.org.slug}/data/").content.decode()
    section = page[page.index('id="batches"') :]
    assert batch["id"] in section and failed["id"] in section and "Expired" in section and "Failed" in section
    assert "line 1: body.temperature" in section and "0 done, 0 failed, of 2" in section
    link = f"/orgs/{tenant_a.org.slug}/data/{error_file}/download/"
    assert link in section
    download = console.get(link)
    assert download.status_code == 200
    assert [json.loads(x)["custom_id"] for x in b"".join(download.streaming_content).splitlines()] == [
        "request-0",
        "request-1",
    ]
    console.force_login(tenant_b.owner)
    assert console.get(link).status_code == 404
    assert console.get(f"/orgs/{tenant_b.org.slug}/data/{error_file}/download/").status_code == 404
