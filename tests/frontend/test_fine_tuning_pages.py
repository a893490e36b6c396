"""The console's training-data and fine-tuning pages through Django's test client: an upload's
validation report names each bad line, the estimate makes "auto" concrete before launch, form
errors sit by their field, and roles and organizations hold."""

import json

from django.core.files.uploadedfile import SimpleUploadedFile

from fine_tuning.models import File
from tests.conftest import DEMO_MODEL

GOOD = "\n".join(
    json.dumps({"messages": [{"role": "user", "content": f"Q{n}?"}, {"role": "assistant", "content": f"A{n}."}]})
    for n in range(30)
)
ROWS = GOOD.split("\n")
BAD = [*ROWS[:3], '{"messages": [{"role": "user", "content": "no answer"}]}', "not json", ROWS[5]]


def upload(client, name: str, text: str):
    return client.post("/orgs/alpha/data/", {"file": SimpleUploadedFile(name, text.encode())})


def test_an_upload_lands_on_its_report_with_the_bad_lines_named(client, tenant_a, django_capture_on_commit_callbacks):
    client.force_login(tenant_a.owner)
    assert "No training data yet" in client.get("/orgs/alpha/data/").content.decode()
    with django_capture_on_commit_callbacks(execute=True):
        sent = upload(client, "bad.jsonl", "\n".join(BAD))
    bad = File.all_orgs.get(filename="bad.jsonl")
    assert sent.status_code == 302 and sent["Location"] == f"/orgs/alpha/data/{bad.pk}/"
    report = client.get(sent["Location"]).content.decode()
    errors = report[report.index('data-testid="file-errors"') :]
    assert "<td>4</td>" in errors and "<td>5</td>" in errors  # the lines, as the file numbers them
    assert "example_missing_assistant_message" in errors
    with_progress = client.post(
        "/orgs/alpha/data/",
        {"file": SimpleUploadedFile("good.jsonl", GOOD.encode())},
        headers={"X-Requested-With": "upload"},
    )
    assert with_progress.status_code == 200 and with_progress.json()["redirect"].startswith("/orgs/alpha/data/file-")
    assert upload(client, "notes.txt", "hello").status_code == 400  # named, on the page


def test_the_estimate_resolves_auto_and_the_form_names_bad_fields(client, tenant_a, django_capture_on_commit_callbacks):
    client.force_login(tenant_a.owner)
    with django_capture_on_commit_callbacks(execute=True):
        upload(client, "good.jsonl", GOOD)
    good = File.all_orgs.get(filename="good.jsonl")
    assert good.status == "processed"
    page = client.get(f"/orgs/alpha/fine-tuning/?training_file={good.pk}").content.decode()
    assert f'value="{good.pk}" selected' in page and "No fine-tuning jobs yet" in page
    estimate = client.post(
        "/orgs/alpha/fine-tuning/estimate/",
        {"model": DEMO_MODEL, "training_file": good.pk},
        headers={"HX-Request": "true"},
    ).content.decode()
    assert "4 epochs, batch size 1" in estimate and "training tokens" in estimate and "USD" in estimate
    refused = client.post("/orgs/alpha/fine-tuning/", {"model": DEMO_MODEL, "training_file": good.pk, "n_epochs": 99})
    assert refused.status_code == 200 and 'id="id_n_epochs-error"' in refused.content.decode()


def test_viewers_see_but_cannot_upload_or_launch_and_other_orgs_get_404(client, tenant_a, tenant_b):
    viewer = tenant_a.add_member("v@alpha.test", role="viewer")
    client.force_login(viewer)
    page = client.get("/orgs/alpha/fine-tuning/").content.decode()
    assert "Launch" not in page and 'data-testid="upload-form"' not in client.get("/orgs/alpha/data/").content.decode()
    assert upload(client, "good.jsonl", GOOD).status_code == 403
    assert client.post("/orgs/alpha/fine-tuning/", {"model": DEMO_MODEL}).status_code == 403
    file = File.all_orgs.create(
        organization=tenant_a.org, purpose="fine-tune", filename="x.jsonl", bytes=1, sha256="0", storage_key="k"
    )
    client.force_login(tenant_b.owner)
    assert client.get(f"/orgs/alpha/data/{file.pk}/").status_code == 404
    assert client.get(f"/orgs/beta/data/{file.pk}/").status_code == 404


def test_validated_files_become_numbered_versions_of_a_dataset(client, tenant_a, django_capture_on_commit_callbacks):
    client.force_login(tenant_a.owner)
    with django_capture_on_commit_callbacks(execute=True):
        upload(client, "first.jsonl", GOOD)
        upload(client, "second.jsonl", "\n".join(ROWS[:12]))
    first, second = (File.all_orgs.get(filename=n) for n in ("first.jsonl", "second.jsonl"))
    assert "Not in a dataset yet" in client.get(f"/orgs/alpha/data/{first.pk}/").content.decode()
    client.post(f"/orgs/alpha/data/{first.pk}/", {"dataset": "capitals", "note": "initial"})
    added = client.post(f"/orgs/alpha/data/{second.pk}/", {"dataset": "capitals"}, follow=True).content.decode()
    assert "Added as version 2 of capitals." in added
    listing = client.get("/orgs/alpha/data/").content.decode()
    assert listing.index(">v2</a>") < listing.index(">v1</a>") and "initial" in listing
    member = tenant_a.add_member("v@alpha.test", role="viewer")
    client.force_login(member)
    assert client.post(f"/orgs/alpha/data/{first.pk}/", {"dataset": "x"}).status_code == 403
