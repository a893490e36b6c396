"""Validating fine-tuning data, line by line, with line numbers — no Django, so the trainer
reads examples through the same rules.

Accepted: JSONL with one example per line, either chat (`{"messages": [...]}`) or
prompt/completion (`{"prompt": ..., "completion": ...}`). Error codes follow OpenAI's names where
OpenAI has one. Lines are read with a bounded buffer: a 10 MB line is reported, never held whole.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import BinaryIO

MESSAGE_KEYS = {"role", "content", "name", "weight"}
ROLES = {"system", "user", "assistant"}
MAX_ERRORS_KEPT = 100
MIN_EXAMPLES = 10


@dataclass
class LineError:
    line: int
    code: str
    message: str

    def as_dict(self) -> dict:
        return {"line": self.line, "code": self.code, "message": self.message}


@dataclass
class Report:
    format: str = ""
    examples: int = 0
    lines: int = 0
    total_tokens: int = 0
    max_example_tokens: int = 0
    min_example_tokens: int = 0
    trained_tokens_per_epoch: int = 0
    messages_by_role: dict = field(default_factory=dict)
    tokens_by_role: dict = field(default_factory=dict)
    errors: list[LineError] = field(default_factory=list)
    error_count: int = 0

    def error(self, line: int, code: str, message: str) -> None:
        self.error_count += 1
        if len(self.errors) < MAX_ERRORS_KEPT:
            self.errors.append(LineError(line, code, message))

    @property
    def ok(self) -> bool:
        return self.error_count == 0

    def summary(self, first: int = 3) -> str | None:
        if self.ok:
            return None
        shown = "; ".join(
            (f"line {e.line}: {e.message} ({e.code})" if e.line else f"{e.message} ({e.code})")
            for e in self.errors[:first]
        )
        more = self.error_count - min(first, len(self.errors))
        return shown + (f"; and {more} more error{'s' if more != 1 else ''}" if more > 0 else "")

    def as_dict(self) -> dict:
        return {
            "format": self.format,
            "examples": self.examples,
            "lines": self.lines,
            "total_tokens": self.total_tokens,
            "max_example_tokens": self.max_example_tokens,
            "min_example_tokens": self.min_example_tokens,
            "messages_by_role": self.messages_by_role,
            "tokens_by_role": self.tokens_by_role,
            "error_count": self.error_count,
            "errors": [e.as_dict() for e in self.errors],
        }


def read_lines(stream: BinaryIO, max_line_bytes: int) -> Iterator[tuple[int, bytes | None]]:
    """Yield (line number, raw line) — or (line number, None) for a line longer than the limit,
    which is skipped without being held in memory."""
    number = 0
    while True:
        chunk = stream.readline(max_line_bytes + 1)
        if not chunk:
            return
        number += 1
        if len(chunk) > max_line_bytes and not chunk.endswith(b"\n"):
            while True:  # discard the rest of the oversized line
                rest = stream.readline(1 << 20)
                if not rest or rest.endswith(b"\n"):
                    break
            yield number, None
            continue
        yield number, chunk


MAX_NESTING = 32  # no training example nests deeper; json's recursion would fail far deeper


def parse_line(number: int, raw: bytes) -> object:
    """One line as the validator and the trainer both read it (one reader, so they can never
    disagree): UTF-8, a byte-order mark tolerated on line 1, lines split on \n only. Raises
    BadLine with the code and message the validation report uses."""
    if b"\x00" in raw:
        raise BadLine("nul_byte", "the line contains a NUL byte (is this a binary file?)")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadLine("invalid_encoding", f"not UTF-8 (byte {exc.start + 1} of the line)") from None
    if number == 1:
        text = text.removeprefix("\ufeff")
    if not text.strip():
        return None
    try:
        # Without its line break: an error at the line's end is at its last column, not at column 1 of
        # the next line (json counts columns per line).
        value = json.loads(text.rstrip("\r\n"))
    except json.JSONDecodeError as exc:
        if number == 1 and text.lstrip().startswith("["):
            raise BadLine(
                "json_array_not_jsonl", "the file looks like a JSON array; use JSONL: one JSON object per line"
            ) from None
        raise BadLine("invalid_json", f"not valid JSON ({exc.msg} at column {exc.colno})") from None
    except RecursionError:
        raise BadLine("too_deeply_nested", f"the JSON nests deeper than {MAX_NESTING} levels") from None
    if not _nests_within(value, MAX_NESTING):
        raise BadLine("too_deeply_nested", f"the JSON nests deeper than {MAX_NESTING} levels")
    return value


def parsed_lines(stream: BinaryIO, report: Report, max_line_bytes: int) -> Iterator[tuple[int, object]]:
    """(line number, value) for each line that parses; a line too long or not JSON goes to the
    report instead, and blank lines are tolerated."""
    for number, raw in read_lines(stream, max_line_bytes):
        report.lines = number
        if raw is None:
            report.error(number, "line_too_long", f"the line is longer than {max_line_bytes // (1 << 20)} MB")
            continue
        try:
            value = parse_line(number, raw)
        except BadLine as problem:
            report.error(number, problem.code, problem.message)
            continue
        if value is not None:
            yield number, value


def _nests_within(value, limit: int) -> bool:
    # tenancy.api.parsers has the same check for API bodies; this module stays Django-free for the trainer.
    stack = [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict | list):
            if level > limit:
                return False
            stack.extend((child, level + 1) for child in (item.values() if isinstance(item, dict) else item))
    return True


class BadLine(ValueError):
    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code, self.message = code, message


def _chat_problem(example: dict) -> tuple[str, str] | None:
    messages = example.get("messages")
    if not isinstance(messages, list) or not messages:
        return "missing_messages_list", "'messages' must be a non-empty list"
    unknown_top = set(example) - {"messages", "tools", "parallel_tool_calls"}
    if unknown_top:
        return "unrecognized_key", f"unknown key(s) {', '.join(sorted(unknown_top))} next to 'messages'"
    if example.get("tools"):
        return "tools_not_supported", "examples with tools are not supported by this platform yet"
    assistant = False
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            return "message_not_an_object", f"messages[{i}] is not an object"
        missing = {"role", "content"} - set(message)
        if missing:
            return "message_missing_key", f"messages[{i}] lacks {', '.join(sorted(missing))}"
        unknown = set(message) - MESSAGE_KEYS
        if unknown:
            return "message_unrecognized_key", f"messages[{i}] has unknown key(s) {', '.join(sorted(unknown))}"
        if not isinstance(message["role"], str) or message["role"] not in ROLES:
            return "unrecognized_role", f"messages[{i}].role is {message['role']!r}; use system, user or assistant"
        if not isinstance(message["content"], str) or not message["content"].strip():
            return "missing_content", f"messages[{i}].content must be a non-empty string"
        if "weight" in message and message["weight"] not in (0, 1):
            return "invalid_weight", f"messages[{i}].weight must be 0 or 1"
        if "weight" in message and message["role"] != "assistant":
            return "invalid_weight", f"messages[{i}].weight is only allowed on assistant messages"
        assistant = assistant or message["role"] == "assistant"
    if not assistant:
        return "example_missing_assistant_message", "no assistant message to learn from"
    return None


def _completion_problem(example: dict) -> tuple[str, str] | None:
    unknown = set(example) - {"prompt", "completion"}
    if unknown:
        return "unrecognized_key", f"unknown key(s) {', '.join(sorted(unknown))} next to prompt/completion"
    if not isinstance(example.get("prompt"), str):
        return "invalid_prompt", "'prompt' must be a string"
    if not isinstance(example.get("completion"), str) or not example["completion"].strip():
        return "missing_completion", "'completion' must be a non-empty string"
    return None


def as_chat(example: dict) -> list[dict]:
    """The conversation an example trains on (prompt/completion becomes user/assistant)."""
    if "messages" in example:
        return [
            {k: m[k] for k in ("role", "content") if k in m} | ({"weight": m["weight"]} if "weight" in m else {})
            for m in example["messages"]
        ]
    return [{"role": "user", "content": example["prompt"]}, {"role": "assistant", "content": example["completion"]}]


def count_tokens(tokenizer, conversation: list[dict]) -> tuple[int, dict[str, int]]:
    """Tokens of the rendered conversation, and per role (each message rendered alone)."""
    plain = [{"role": m["role"], "content": m["content"]} for m in conversation]
    total = len(tokenizer.apply_chat_template(plain, tokenize=True, return_dict=False))
    per_role: dict[str, int] = {}
    for message in plain:
        per_role[message["role"]] = per_role.get(message["role"], 0) + len(
            tokenizer(message["content"], add_special_tokens=False)["input_ids"]
        )
    return total, per_role


def validate(
    stream: BinaryIO,
    *,
    tokenizer=None,
    max_tokens_per_example: int | None = None,
    max_line_bytes: int = 4 << 20,
    min_examples: int = MIN_EXAMPLES,
) -> Report:
    report = Report()
    formats_seen: dict[str, int] = {}
    token_counts: list[int] = []
    nonblank = 0
    for number, example in parsed_lines(stream, report, max_line_bytes):
        nonblank += 1
        if isinstance(example, list):
            report.error(number, "json_array_not_jsonl", "a JSON array; use JSONL: one JSON object per line")
            continue
        if not isinstance(example, dict):
            report.error(number, "not_an_object", f"each line must be a JSON object, not {type(example).__name__}")
            continue
        kind = (
            "chat"
            if "messages" in example
            else "completion"
            if "prompt" in example or "completion" in example
            else None
        )
        if kind is None:
            report.error(number, "missing_messages_list", "no 'messages' list (or 'prompt' and 'completion')")
            continue
        problem = _chat_problem(example) if kind == "chat" else _completion_problem(example)
        if problem:
            report.error(number, *problem)
            continue
        formats_seen.setdefault(kind, number)
        if len(formats_seen) > 1:
            first = min(formats_seen, key=formats_seen.get)
            report.error(number, "mixed_formats", f"this line is {kind} but line {formats_seen[first]} is {first}")
            continue
        conversation = as_chat(example)
        for message in conversation:
            report.messages_by_role[message["role"]] = report.messages_by_role.get(message["role"], 0) + 1
        if tokenizer is not None:
            try:
                tokens, per_role = count_tokens(tokenizer, conversation)
            except Exception as exc:  # the model's template refused it (e.g. roles out of order)
                report.error(number, "template_error", f"the chat template cannot render it: {exc}")
                continue
            if max_tokens_per_example and tokens > max_tokens_per_example:
                report.error(
                    number,
                    "example_too_long",
                    f"{tokens} tokens, above the limit of {max_tokens_per_example} for this model",
                )
                continue
            token_counts.append(tokens)
            for role, count in per_role.items():
                report.tokens_by_role[role] = report.tokens_by_role.get(role, 0) + count
        report.examples += 1
    report.format = next(iter(formats_seen), "")
    if nonblank == 0 and report.ok:
        report.error(0, "empty_file", "the file is empty")
    elif report.examples < min_examples:
        report.error(0, "invalid_n_examples", f"{report.examples} valid examples; at least {min_examples} are needed")
    if token_counts:
        report.total_tokens = sum(token_counts)
        report.max_example_tokens = max(token_counts)
        report.min_example_tokens = min(token_counts)
    return report
