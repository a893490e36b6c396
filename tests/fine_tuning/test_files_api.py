"""/v1/files in OpenAI shapes: upload, validation at upload, list, retrieve, content, delete."""

import json

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from fine_tuning.models import DatasetVersion, File
from tests.conftest import key_client, session_client


def training_file(n: int = 12, name: str = "train.jsonl", broken_line: int | None = None) -> SimpleUploadedFile:
    rows = [
        json.dumps({"messages": [{"role": "user", "content": f"Q{i}"}, {"role": "assistant", "content": f"A{i}"}]})
        for i in range(n)
    ]
    if broken_line:
        rows[broken_line - 1] = '{"messages": [{"role": "user"}]}'
    return SimpleUploadedFile(name, ("\n".join(rows) + "\n").encode(), content_type="application/jsonl")


@pytest.fixture
def upload(tenant_a, django_capture_on_commit_callbacks):
    client = key_client(tenant_a.key(scopes=["files"]))

    def send(file=None, purpose="fine-tune"):
        with django_capture_on_commit_callbacks(execute=True):
            return client.post("/v1/files", {"file": file or training_file(), "purpose": purpose}, format="multipart")

    send.client = client
    return send


def test_upload_validate_list_retrieve_download_delete(upload):
    created = upload()
    assert created.status_code == 200, created.content
    body = created.json()
    assert set(body) == {
        "id",
        "object",
        "bytes",
        "created_at",
        "filename",
        "purpose",
        "status",
        "status_details",
        "expires_at",
    }
    assert body["object"] == "file" and body["id"].startswith("file-") and body["filename"] == "train.jsonl"
    assert body["status"] == "uploaded" and body["purpose"] == "fine-tune"
    client = upload.client
    retrieved = client.get(f"/v1/files/{body['id']}").json()
    assert retrieved["status"] == "processed" and retrieved["status_details"] is None  # validated on commit
    row = File.all_orgs.get(pk=body["id"])
    assert row.report["examples"] == 12 and row.report["format"] == "chat" and row.bytes == body["bytes"]
    import hashlib

    content = client.get(f"/v1/files/{body['id']}/content")
    data = b"".join(content.streaming_content)
    assert hashlib.sha256(data).hexdigest() == row.sha256 and len(data) == row.bytes
    listed = client.get("/v1/files").json()
    assert listed["object"] == "list" and [f["id"] for f in listed["data"]] == [body["id"]]
    deleted = client.delete(f"/v1/files/{body['id']}")
    assert deleted.json() == {"id": body["id"], "object": "file", "deleted": True}
    assert client.get(f"/v1/files/{body['id']}").status_code == 404
    assert client.get("/v1/files").json()["data"] == []


def test_invalid_file_is_rejected_line_by_line(upload):
    body = upload(training_file(broken_line=7)).json()
    retrieved = upload.client.get(f"/v1/files/{body['id']}").json()
    assert retrieved["status"] == "error"
    assert retrieved["status_details"] == "line 7: messages[0] lacks content (message_missing_key)"


def test_bad_uploads_are_refused_clearly(upload, settings):
    wrong_type = upload(training_file(name="train.csv"))
    assert wrong_type.status_code == 400 and wrong_type.json()["error"]["param"] == "file"
    no_purpose = upload.client.post("/v1/files", {"file": training_file()}, format="multipart")
    assert no_purpose.status_code == 400 and no_purpose.json()["error"]["param"] == "purpose"
    bad_purpose = upload(purpose="assistants")
    assert bad_purpose.status_code == 400 and bad_purpose.json()["error"]["code"] == "invalid_purpose"
    settings.FILE_UPLOAD_MAX_BYTES = 100
    too_big = upload()
    assert too_big.status_code == 413 and "too large" in too_big.json()["error"]["message"]
    assert File.all_orgs.count() == 0


def test_files_need_the_files_scope(tenant_a):
    response = key_client(tenant_a.key(scopes=["inference"])).get("/v1/files")
    assert response.status_code == 403 and response.json()["error"]["code"] == "insufficient_scope"
    assert key_client("").get("/v1/files").status_code == 401


def test_datasets_version_validated_files(upload, tenant_a):
    first, second = upload().json()["id"], upload().json()["id"]
    broken = upload(training_file(broken_line=2)).json()["id"]
    owner = session_client(tenant_a.owner)
    base = f"/api/orgs/{tenant_a.org.slug}/datasets/"
    dataset = owner.post(base, {"name": "support-tickets", "description": "v1 of the bot"}, format="json").json()
    assert owner.post(base, {"name": "support-tickets"}, format="json").status_code == 409
    versions = f"{base}{dataset['id']}/versions/"
    assert owner.post(versions, {"file_id": first}, format="json").json()["number"] == 1
    assert owner.post(versions, {"file_id": second, "note": "more data"}, format="json").json()["number"] == 2
    refused = owner.post(versions, {"file_id": broken}, format="json")
    assert refused.status_code == 400 and refused.json()["error"]["code"] == "file_not_processed"
    assert [v["number"] for v in owner.get(versions).json()["data"]] == [2, 1]
    assert DatasetVersion.all_orgs.count() == 2
    in_use = upload.client.delete(f"/v1/files/{first}")
    assert in_use.status_code == 409 and in_use.json()["error"]["code"] == "file_in_dataset"
    report = owner.get(f"/api/orgs/{tenant_a.org.slug}/files/{broken}/").json()
    assert report["report"]["errors"] == [
        {"line": 2, "code": "message_missing_key", "message": "messages[0] lacks content"}
    ]


def test_an_organization_keeps_files_within_its_storage_quota(upload, tenant_a, tenant_b, settings):
    from tenancy import services
    from tenancy.audit import Actor

    one = len(training_file().read())
    settings.STORAGE_QUOTA_BYTES = 2 * one
    assert upload().status_code == 200
    assert upload().status_code == 200
    refused = upload()
    assert refused.status_code == 400
    assert refused.json()["error"]["code"] == "storage_quota_exceeded"
    assert f"{2 * one:,} bytes" in refused.json()["error"]["message"]
    assert File.all_orgs.filter(organization=tenant_a.org).count() == 2
    # Deleting a file makes room; another organization has its own quota; the back office raises one.
    first = File.all_orgs.filter(organization=tenant_a.org).first()
    assert upload.client.delete(f"/v1/files/{first.pk}").status_code == 200
    assert upload().status_code == 200
    other = key_client(tenant_b.key(scopes=["files"]))
    theirs = other.post("/v1/files", {"file": training_file(), "purpose": "fine-tune"}, format="multipart")
    assert theirs.status_code == 200
    services.set_storage_quota(tenant_a.org.pk, quota=10 * one, actor=Actor())
    assert upload().status_code == 200


def test_uploads_are_rate_limited_per_organization(upload, tenant_a, settings):
    import time

    from fine_tuning import services

    settings.FILE_UPLOADS_PER_HOUR = 3
    if 3600 - time.time() % 3600 < 30:
        time.sleep(31)  # not across a clock hour
    services.forget_upload_count(tenant_a.org.pk)  # an earlier test's organization may have had this id
    for _ in range(3):
        assert upload().status_code == 200
    refused = upload()
    assert refused.status_code == 429
    assert refused.json()["error"]["code"] == "too_many_uploads"
    assert 0 < int(refused["Retry-After"]) <= 3600
    assert File.all_orgs.filter(organization=tenant_a.org).count() == 3


def test_a_file_whose_validation_message_was_lost_is_validated_later(
    upload, tenant_a, django_capture_on_commit_callbacks
):
    """The broker lost the validation message (Redis restarted without keeping its queue): the
    reaper's pass sends it again, once per interval, and the file is validated."""
    from datetime import timedelta

    from django.utils import timezone

    from fine_tuning import services

    with django_capture_on_commit_callbacks(execute=False):  # the message is lost
        file_id = upload.client.post(
            "/v1/files", {"file": training_file(), "purpose": "fine-tune"}, format="multipart"
        ).json()["id"]
    assert File.all_orgs.get(pk=file_id).status == "uploaded"
    assert services.resend_stuck_validations() == 0  # too early to call it lost
    File.all_orgs.filter(pk=file_id).update(created_at=timezone.now() - timedelta(minutes=5))
    with django_capture_on_commit_callbacks(execute=True):
        assert services.resend_stuck_validations() == 1
    assert File.all_orgs.get(pk=file_id).status == "processed"
    assert services.resend_stuck_validations() == 0
