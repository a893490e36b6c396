"""Line-by-line validation of fine-tuning data: a corpus of malformed files, each with a
different defect, rejected with the right code on the right line; nothing crashes."""

import io
import json

import pytest
from django.conf import settings

from catalog.loader import load_tokenizer
from fine_tuning import datafile
from tests.conftest import DEMO_SOURCE


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(DEMO_SOURCE, settings.MODEL_CACHE_DIR)


def chat(i: int) -> dict:
    return {
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": f"Say {i}"},
            {"role": "assistant", "content": f"{i}"},
        ]
    }


def jsonl(rows) -> bytes:
    return "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows).encode()


def good(n: int = 12) -> list:
    return [chat(i) for i in range(n)]


def with_line(line_number: int, bad) -> bytes:
    rows = good()
    rows.insert(line_number - 1, bad)
    return jsonl(rows)


CORPUS = {
    "empty file": (b"", 0, "empty_file"),
    "a role that is not a string": (
        with_line(3, {"messages": [{"role": ["user"], "content": "a"}]}),
        3,
        "unrecognized_role",
    ),
    "json nested a thousand deep": (
        with_line(4, '{"messages": ' + "[" * 1000 + "]" * 1000 + "}"),
        4,
        "too_deeply_nested",
    ),
    "json nested forty deep": (with_line(5, '{"messages": ' + "[" * 40 + "]" * 40 + "}"), 5, "too_deeply_nested"),
    "json array": (json.dumps(good()).encode(), 1, "json_array_not_jsonl"),
    "latin-1 bytes": (
        with_line(3, "").replace(b"\n\n", b'\n{"prompt": "caf\xe9", "completion": "x"}\n', 1),
        3,
        "invalid_encoding",
    ),
    "nul byte": (with_line(4, '{"messages": []}').replace(b'{"messages": []}', b'{"mess\x00ages": []}'), 4, "nul_byte"),
    "truncated json": (with_line(5, '{"messages": [{"role": "user"'), 5, "invalid_json"),
    "a number": (with_line(2, "42"), 2, "not_an_object"),
    "no messages key": (with_line(6, {"conversation": []}), 6, "missing_messages_list"),
    "empty messages": (with_line(7, {"messages": []}), 7, "missing_messages_list"),
    "message without content": (with_line(8, {"messages": [{"role": "user"}]}), 8, "message_missing_key"),
    "unknown message key": (
        with_line(9, {"messages": [{"role": "user", "content": "a", "mood": "x"}]}),
        9,
        "message_unrecognized_key",
    ),
    "unknown role": (with_line(10, {"messages": [{"role": "robot", "content": "a"}]}), 10, "unrecognized_role"),
    "empty content": (
        with_line(3, {"messages": [{"role": "user", "content": " "}, {"role": "assistant", "content": "a"}]}),
        3,
        "missing_content",
    ),
    "no assistant": (
        with_line(2, {"messages": [{"role": "user", "content": "hi"}]}),
        2,
        "example_missing_assistant_message",
    ),
    "bad weight": (
        with_line(
            4, {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b", "weight": 5}]}
        ),
        4,
        "invalid_weight",
    ),
    "mixed formats": (with_line(5, {"prompt": "a", "completion": "b"}), 5, "mixed_formats"),
    "completion missing": (
        jsonl([{"prompt": "a", "completion": "b"}] * 11 + [{"prompt": "a"}]),
        12,
        "missing_completion",
    ),
    "too few examples": (jsonl(good(4)), 0, "invalid_n_examples"),
    "too long example": (
        with_line(
            3, {"messages": [{"role": "user", "content": "word " * 3000}, {"role": "assistant", "content": "ok"}]}
        ),
        3,
        "example_too_long",
    ),
}


@pytest.mark.parametrize("name", list(CORPUS))
def test_each_defect_is_named_on_its_line(name, tokenizer):
    content, line, code = CORPUS[name]
    report = datafile.validate(io.BytesIO(content), tokenizer=tokenizer, max_tokens_per_example=2048)
    assert not report.ok
    assert (report.errors[0].line, report.errors[0].code) == (line, code), report.errors
    assert report.summary().startswith(f"line {line}: " if line else report.errors[0].message)


def test_a_truncated_line_is_reported_at_the_column_where_it_breaks_off(tokenizer):
    truncated = '{"messages": [{"role": "user"'
    report = datafile.validate(io.BytesIO(with_line(5, truncated)), tokenizer=tokenizer)
    assert f"at column {len(truncated) + 1})" in report.errors[0].message  # not column 1 of the line break


def test_corpus_has_fifteen_distinct_defects():
    assert len({code for _, _, code in CORPUS.values()}) >= 15


def test_a_ten_megabyte_line_is_reported_without_being_read_whole(tokenizer):
    content = jsonl(good()) + b'{"messages": "' + b"x" * (10 << 20) + b'"}\n' + jsonl(good(2))
    report = datafile.validate(io.BytesIO(content), tokenizer=tokenizer, max_line_bytes=4 << 20)
    assert [(e.line, e.code) for e in report.errors] == [(13, "line_too_long")]
    assert report.examples == 14  # the lines after it are still read


def test_valid_file_report(tokenizer):
    rows = [
        *good(11),
        {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello", "weight": 1}]},
    ]
    report = datafile.validate(io.BytesIO(jsonl(rows) + b"\n"), tokenizer=tokenizer)
    assert report.ok and report.summary() is None
    assert (report.format, report.examples, report.lines) == ("chat", 12, 13)
    assert report.messages_by_role == {"system": 11, "user": 12, "assistant": 12}
    assert report.total_tokens > report.max_example_tokens >= report.min_example_tokens > 0
    completions = jsonl([{"prompt": f"{i} +1 =", "completion": f" {i + 1}"} for i in range(10)])
    assert datafile.validate(io.BytesIO(completions), tokenizer=tokenizer).format == "completion"


def test_errors_are_capped_but_counted(tokenizer):
    report = datafile.validate(io.BytesIO(jsonl(["oops"] * 250)), tokenizer=tokenizer)
    assert report.error_count == 251 and len(report.errors) == 100  # 250 lines + too few examples
    assert report.summary().endswith("and 248 more errors")


def test_the_trainer_reads_exactly_what_the_validator_accepted(tokenizer, tmp_path):
    """A byte-order mark on line 1 and a bare carriage return inside a line: the validator accepts
    the file, and the trainer reads the same examples from it (it used to choke on both)."""
    from fine_tuning.trainer.data import read_examples

    rows = good()
    body = jsonl(rows).replace(b'"Say 3"', b'"Say\\r 3"').replace(b"{", b"{\r", 1)
    content = b"\xef\xbb\xbf" + body.replace(b'"system", "content"', b'"system",\r "content"')
    assert b"\r" in content
    report = datafile.validate(io.BytesIO(content), tokenizer=tokenizer, max_tokens_per_example=2048)
    assert report.ok and report.examples == len(rows), report.errors
    path = tmp_path / "data.jsonl"
    path.write_bytes(content)
    assert len(read_examples(str(path), tokenizer, 256)) == len(rows)


def test_a_validation_that_crashes_leaves_the_file_in_error_with_the_reason(
    tenant_a, django_capture_on_commit_callbacks
):
    """Whatever goes wrong inside validation, the file ends in `error` with the reason — never
    `uploaded` forever. (Here the stored file vanished before the task ran.)"""
    from django.core.files.storage import default_storage
    from django.core.files.uploadedfile import SimpleUploadedFile

    from fine_tuning import services
    from fine_tuning.models import File
    from tests.conftest import key_client

    client = key_client(tenant_a.key(scopes=["files"]))
    upload = SimpleUploadedFile("data.jsonl", jsonl(good()))
    with django_capture_on_commit_callbacks(execute=False):
        file_id = client.post("/v1/files", {"file": upload, "purpose": "fine-tune"}, format="multipart").json()["id"]
    default_storage.delete(File.all_orgs.get(pk=file_id).storage_key)
    from tenancy import scope

    with scope.organization(tenant_a.org.pk):  # as the validation task runs
        row = services.validate_file(file_id)
    assert row.status == "error" and row.status_details.startswith("The platform failed while validating this file")
    assert file_id in row.status_details and "FileNotFound" not in row.status_details
