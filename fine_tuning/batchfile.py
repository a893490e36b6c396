"""Validating a Batch API input file (purpose "batch"), line by line, with line numbers.

Each line is OpenAI's `{"custom_id", "method", "url", "body"}`; its body is parsed by the same
protocol as the synchronous call to `url` (serving.protocol), so a line that the API would refuse
as a call is refused here, at upload, naming its line and the parameter. Every line of a file calls
one `url`, and no `custom_id` appears twice (a batch's output is matched to its input by it).
Whether the organization may call each model is the caller's to check (it needs the database):
the report lists the models and the lines that first name them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import BinaryIO

from fine_tuning.datafile import Report, parsed_lines
from serving.protocol import ProtocolError, generation
from serving.protocol import embeddings as embeddings_protocol

PARSERS = {
    "/v1/chat/completions": generation.parse_chat,
    "/v1/completions": generation.parse_completion,
    "/v1/embeddings": embeddings_protocol.parse,
}
LINE_KEYS = ("custom_id", "method", "url", "body")
MAX_REQUESTS = 50_000  # OpenAI's bound on a batch file
MAX_CUSTOM_ID = 512


@dataclass
class BatchReport(Report):
    url: str = ""
    requests: int = 0
    url_line: int = 0  # the first line, whose url every other must use
    models: dict[str, int] = field(default_factory=dict)  # model -> the first line that names it

    def as_dict(self) -> dict:
        return {
            "format": "batch",
            "url": self.url,
            "requests": self.requests,
            "lines": self.lines,
            "models": self.models,
            "error_count": self.error_count,
            "errors": [e.as_dict() for e in self.errors],
        }


def _line_problem(line: dict) -> tuple[str, str] | None:
    missing = [key for key in LINE_KEYS if key not in line]
    if missing:
        return "missing_required_parameter", f"the line lacks {', '.join(repr(k) for k in missing)}"
    unknown = sorted(set(line) - set(LINE_KEYS))
    if unknown:
        return "unrecognized_key", f"unknown key(s) {', '.join(unknown)}; a line has only {', '.join(LINE_KEYS)}"
    custom_id = line["custom_id"]
    if not isinstance(custom_id, str) or not custom_id or len(custom_id) > MAX_CUSTOM_ID:
        return "invalid_custom_id", f"'custom_id' must be a string of 1 to {MAX_CUSTOM_ID} characters"
    if line["method"] != "POST":
        return "invalid_method", f"'method' is {line['method']!r}; only POST is supported"
    if line["url"] not in PARSERS:
        return "invalid_url", f"'url' is {line['url']!r}; use one of {', '.join(PARSERS)}"
    if not isinstance(line["body"], dict):
        return "invalid_body", "'body' must be a JSON object: the request as the synchronous API takes it"
    if line["body"].get("stream") is True:
        return "invalid_body", "'body.stream' cannot be true in a batch: every answer is written to the output file"
    return None


def validate(stream: BinaryIO, *, max_line_bytes: int = 4 << 20, max_requests: int = MAX_REQUESTS) -> BatchReport:
    report = BatchReport()
    first_of: dict[str, int] = {}
    nonblank = 0
    for number, line in parsed_lines(stream, report, max_line_bytes):
        nonblank += 1
        if not isinstance(line, dict):
            report.error(number, "not_an_object", f"each line must be a JSON object, not {type(line).__name__}")
            continue
        problem = _line_problem(line)
        if problem:
            report.error(number, *problem)
            continue
        if report.url and line["url"] != report.url:
            message = f"'url' is {line['url']}, but line {report.url_line} calls {report.url}: one url a file"
            report.error(number, "mismatched_url", message)
            continue
        try:
            request = PARSERS[line["url"]](line["body"])
        except ProtocolError as error:
            where = f"body.{error.param}" if error.param else "body"
            report.error(number, error.code, f"{where}: {error.message}")
            continue
        custom_id = line["custom_id"]
        if custom_id in first_of:
            message = f"custom_id {custom_id!r} is also on line {first_of[custom_id]}"
            report.error(number, "duplicate_custom_id", message)
            continue
        first_of[custom_id] = number
        if not report.url:
            report.url, report.url_line = line["url"], number
        report.models.setdefault(request.model, number)
        report.requests += 1
        if report.requests > max_requests:
            report.error(number, "too_many_requests", f"a batch file holds at most {max_requests:,} requests")
            break
    if nonblank == 0 and report.ok:
        report.error(0, "empty_file", "the file is empty")
    return report


def requests(stream: BinaryIO, *, max_line_bytes: int = 4 << 20):
    """(line number, custom_id, url, body) for each request of a file that `validate` accepted."""
    report = BatchReport()
    for number, line in parsed_lines(stream, report, max_line_bytes):
        yield number, line["custom_id"], line["url"], line["body"]
