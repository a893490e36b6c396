"""Batch API input files (purpose "batch"): every line checked at upload as the synchronous API
would check its request, and a bad line named by its number and parameter."""

import io
import json

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from fine_tuning import batchfile
from fine_tuning.models import File
from tests.conftest import DEMO_MODEL, key_client, session_client


def chat_line(i: int, **body) -> dict:
    return {
        "custom_id": f"request-{i}",
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"model": DEMO_MODEL, "messages": [{"role": "user", "content": f"Say {i}"}], **body},
    }


def jsonl(lines: list) -> bytes:
    return ("\n".join(line if isinstance(line, str) else json.dumps(line) for line in lines) + "\n").encode()


TRUNCATED = '{"custom_id": "x", "method": "POST", "url": "/v1/chat/completions", "body": {'


def check(lines: list) -> batchfile.BatchReport:
    return batchfile.validate(io.BytesIO(jsonl(lines)))


def test_a_valid_file_reports_its_requests_url_and_models():
    lines = [chat_line(i) for i in range(5)] + [chat_line(5, model="ft:other", max_tokens=8)]
    report = check(lines)
    assert report.ok, report.errors
    assert (report.requests, report.url, report.models) == (6, "/v1/chat/completions", {DEMO_MODEL: 1, "ft:other": 6})


@pytest.mark.parametrize(
    ("line", "code", "says"),
    [
        (TRUNCATED, "invalid_json", f"at column {len(TRUNCATED) + 1})"),
        ({"custom_id": "x", "method": "POST", "body": {}}, "missing_required_parameter", "'url'"),
        ({**chat_line(6), "extra": 1}, "unrecognized_key", "extra"),
        ({**chat_line(6), "custom_id": ""}, "invalid_custom_id", "custom_id"),
        ({**chat_line(6), "method": "GET"}, "invalid_method", "GET"),
        ({**chat_line(6), "url": "/v1/responses"}, "invalid_url", "/v1/responses"),
        (chat_line(6, stream=True), "invalid_body", "body.stream"),
        ({**chat_line(6), "body": {"model": DEMO_MODEL, "messages": [{"role": "user"}]}}, None, "body.messages.0"),
        (chat_line(6, temperature=5), None, "body.temperature"),
        (chat_line(6, best_of=2), "unknown_parameter", "body.best_of"),
        (chat_line(0), "duplicate_custom_id", "line 1"),
        ({**chat_line(6), "url": "/v1/embeddings", "body": {"model": "m", "input": "x"}}, "mismatched_url", "line 1"),
    ],
)
def test_a_bad_line_7_is_named_with_its_reason(line, code, says):
    lines = [chat_line(i) for i in range(6)] + [line] + [chat_line(7)]
    report = check(lines)
    assert [e.line for e in report.errors] == [7], report.errors
    error = report.errors[0]
    assert (code is None or error.code == code) and says in error.message, error
    assert report.requests == 7  # the other lines still count


def test_embeddings_and_completions_lines_are_parsed_by_their_own_protocol():
    embed = {"custom_id": "e", "method": "POST", "url": "/v1/embeddings", "body": {"model": "m", "input": ""}}
    assert "body.input" in check([embed]).errors[0].message  # an empty string has no embedding
    legacy = {"custom_id": "c", "method": "POST", "url": "/v1/completions", "body": {"model": "m", "prompt": "Hi"}}
    assert check([legacy]).ok


def test_an_empty_file_and_a_file_over_the_request_bound_are_refused():
    assert check([]).errors[0].code == "empty_file"
    report = batchfile.validate(io.BytesIO(jsonl([chat_line(i) for i in range(4)])), max_requests=3)
    assert [(e.line, e.code) for e in report.errors] == [(4, "too_many_requests")]


@pytest.mark.django_db
def test_upload_with_purpose_batch_validates_and_names_the_bad_line(tenant_a, django_capture_on_commit_callbacks):
    client = key_client(tenant_a.key(scopes=["files"]))
    lines = [chat_line(i) for i in range(6)] + [{**chat_line(6), "method": "GET"}]

    def upload(content: bytes, name="requests.jsonl"):
        with django_capture_on_commit_callbacks(execute=True):
            file = SimpleUploadedFile(name, content, content_type="application/jsonl")
            return client.post("/v1/files", {"file": file, "purpose": "batch"}, format="multipart")

    bad = upload(jsonl(lines))
    assert bad.status_code == 200 and bad.json()["purpose"] == "batch", bad.content
    answer = client.get(f"/v1/files/{bad.json()['id']}").json()
    assert answer["status"] == "error" and answer["status_details"].startswith("line 7: 'method' is 'GET'")
    good = client.get(f"/v1/files/{upload(jsonl(lines[:6])).json()['id']}").json()
    assert good["status"] == "processed"
    row = File.all_orgs.get(pk=good["id"])
    assert row.report["requests"] == 6 and row.report["url"] == "/v1/chat/completions"
    page = session_client(tenant_a.owner).get(f"/orgs/{tenant_a.org.slug}/data/{good['id']}/")
    shown = page.content.decode()
    assert page.status_code == 200 and "6 calls of <code>/v1/chat/completions</code>" in shown, shown
    assert "Start a fine-tune" not in shown
    listed = session_client(tenant_a.owner).get(f"/orgs/{tenant_a.org.slug}/data/").content.decode()
    assert "6 batch requests" in listed, listed
    named = upload(jsonl(lines[:6]), name="requests.txt")
    assert named.status_code == 400 and "Batch input files must be .jsonl" in named.json()["error"]["message"]


@pytest.mark.django_db
def test_a_batch_file_is_not_training_data(tenant_a):
    from fine_tuning import services
    from tenancy.audit import Actor
    from tenancy.errors import ServiceError

    row = File.all_orgs.create(
        organization=tenant_a.org,
        purpose="batch",
        filename="r.jsonl",
        bytes=1,
        sha256="0",
        storage_key="k",
        status=File.Status.PROCESSED,
    )
    dataset = services.create_dataset(organization_id=tenant_a.org.pk, name="d", actor=Actor.system())
    with pytest.raises(ServiceError, match="a dataset holds training data"):
        services.add_dataset_version(dataset.pk, organization_id=tenant_a.org.pk, file_id=row.pk, actor=Actor.system())
