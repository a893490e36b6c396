"""Constrained decoding: an answer's constraint (serving.protocol.structured) as an llguidance
grammar, compiled off the decode loop, bounded and cached, and the token masks it gives each step.

Compiling runs on one thread of its own with a deadline (COMPILE_SECONDS) and llguidance's
resource limits, so a hostile schema costs its sender a 400, never a stalled batch; a compiled
grammar is kept (CACHE_SIZE of them) and each request decodes with its own copy. JSON is written
with fixed separators and no free whitespace: a small model cannot wander off into blank lines.

Tool calls are written in serving.runtime.tool_calls' format; under `tool_choice: auto` the model
may instead answer in text (any text that does not begin a call).

An answer that must be JSON (a response format, a required or named call) also has to end
within its token budget: a small model at temperature 1 can run on inside a string or a number
until max_tokens cuts the JSON in half. In its last tokens (closing_margin) such an answer is
steered to close: of the tokens the grammar allows, those that end it, then those that close a
string, array or object, then those that move on to the next item, are taken first, so the JSON
still parses and validates (a string may end early).
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor

import torch

from serving.protocol.structured import Constraint
from serving.runtime.protocol import RequestError
from serving.runtime.tool_calls import CALL_CLOSE, CALL_MID, CALL_OPEN, CALL_SEPARATOR, CALL_TAG

COMPILE_SECONDS = 5.0
CACHE_SIZE = 256
# The token texts an answer that runs out of budget is steered to, in order: what closes
# something, then what moves past the current item (our separators are ", " and ": ").
CLOSING_TIERS = (frozenset('"}]'), frozenset('"}], :'))
JSON_STYLE = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": ", "lenient": False}


def _quoted(text: str) -> str:
    return json.dumps(text)


def _json(schema: dict) -> str:
    # Our style wins over any x-guidance options the caller's schema carries.
    return json.dumps({**schema, "x-guidance": JSON_STYLE})


def not_starting_with(prefix: str) -> str:
    """A regular expression of the non-empty texts that do not start with `prefix`: a proper
    prefix of it, or its first k characters followed by anything but its next one, then anything."""
    escape = lambda text: "".join(f"\\x{ord(c):02x}" if ord(c) < 128 else c for c in text)  # noqa: E731
    branches = [escape(prefix[:k]) + f"[^{escape(prefix[k])}][\\s\\S]*" for k in range(len(prefix))]
    branches += [escape(prefix[:k]) for k in range(1, len(prefix))]
    return "(" + "|".join(branches) + ")"


def lark_of(constraint: Constraint) -> str:
    """The grammar (llguidance's Lark dialect) of a constraint."""
    if constraint.kind == "json":
        return f"start: answer\nanswer: %json {_json(constraint.schema or {'type': 'object'})}\n"
    rules, alternatives = [], []
    for i, function in enumerate(constraint.functions):
        literal = _quoted(CALL_OPEN + function.name + CALL_MID)
        alternatives.append(f"{literal} args{i} {_quoted(CALL_CLOSE)}")
        rules.append(f"args{i}: %json {_json(function.parameters)}")
    calls = "call (" + _quoted(CALL_SEPARATOR) + " call)*" if constraint.parallel else "call"
    if constraint.required:
        start = "start: calls"
    elif constraint.schema is not None:  # a tool call, or an answer in the response format's JSON
        start = "start: calls | answer"
        rules.append(f"answer: %json {_json(constraint.schema)}")
    else:
        start = f"start: calls | TEXT |\nTEXT: /{not_starting_with(CALL_TAG)}/"
    return "\n".join([start, f"calls: {calls}", "call: " + " | ".join(alternatives), *rules]) + "\n"


class GrammarLimit(Exception):
    """An answer's grammar cannot go on (llguidance hit one of its limits on this schema)."""


def closing_margin(max_tokens: int) -> int:
    """The last tokens of a budget in which an answer that must be JSON is steered to close."""
    return min(32, max(16, max_tokens // 8))


class Guide:
    """One answer's grammar as the engine steps it: the token mask it allows next (narrowed to
    the closing tiers when the answer must close within `budget` tokens), and the tokens taken."""

    def __init__(self, matcher, closing: list[torch.Tensor] | None = None):
        self.matcher, self.closing = matcher, closing

    def copy(self) -> Guide:
        return Guide(self.matcher.deep_copy(), self.closing)

    def allowed(self, width: int, budget: int, max_tokens: int) -> torch.Tensor:
        mask = allowed(self.matcher, width)
        if self.closing is None or budget > closing_margin(max_tokens):
            return mask
        for tier in self.closing:
            n = min(width, tier.numel())
            narrowed = torch.zeros_like(mask)
            narrowed[:n] = mask[:n] & tier[:n]
            if narrowed.any():
                return narrowed
        return mask

    def consume(self, token: int) -> None:
        if not self.matcher.consume_token(token):
            raise GrammarLimit(self.matcher.get_error().splitlines()[0][:300])

    def stopped(self) -> bool:
        return self.matcher.is_stopped()


class Grammars:
    """One runtime's grammar compiler: its tokenizer as llguidance sees it, the compile thread and
    the cache of compiled grammars."""

    def __init__(self, tokenizer, vocab_size: int, eos_ids=()):
        self.tokenizer, self.vocab_size, self.eos_ids = tokenizer, vocab_size, sorted(eos_ids)
        self._lltokenizer = None
        self._lock = threading.Lock()
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="grammar")
        self._compiled: OrderedDict[str, object] = OrderedDict()
        self._closing: list[torch.Tensor] | None = None

    def lltokenizer(self):
        with self._lock:
            if self._lltokenizer is None:
                import llguidance.hf

                self._lltokenizer = llguidance.hf.from_tokenizer(
                    self.tokenizer, n_vocab=self.vocab_size, eos_token=self.eos_ids or None
                )
            return self._lltokenizer

    def token_bytes(self, token: int) -> bytes:
        return self.lltokenizer().decode_bytes([token])

    def closing(self) -> list[torch.Tensor]:
        """The closing tiers as token masks: the end of the answer, then the tokens whose whole
        text is made of each tier's characters."""
        tokenizer = self.lltokenizer()
        with self._lock:
            if self._closing is None:
                tiers = [torch.zeros(self.vocab_size, dtype=torch.bool) for _ in range(1 + len(CLOSING_TIERS))]
                tiers[0][self.eos_ids] = True
                for token in range(self.vocab_size):
                    text = tokenizer.decode_bytes([token]).decode("utf-8", "replace")
                    for tier, characters in zip(tiers[1:], CLOSING_TIERS, strict=True):
                        if text.strip() and set(text) <= characters:
                            tier[token] = True
                self._closing = tiers
            return self._closing

    def compiled(self, grammar: str):
        """The compiled grammar (cached): copy it for each answer."""
        from llguidance import LLMatcher

        with self._lock:
            found = self._compiled.get(grammar)
            if found is not None:
                self._compiled.move_to_end(grammar)
                return found
        matcher = LLMatcher(self.lltokenizer(), LLMatcher.grammar_from_lark(grammar), log_level=0)
        if matcher.is_error():
            raise ValueError(matcher.get_error())
        with self._lock:
            self._compiled[grammar] = matcher
            while len(self._compiled) > CACHE_SIZE:
                self._compiled.popitem(last=False)
        return matcher

    async def guide(self, constraint: Constraint, param: str) -> Guide:
        """A fresh guide for one answer, or a 400 naming `param` when the grammar cannot be made."""
        grammar = lark_of(constraint)
        future = asyncio.get_running_loop().run_in_executor(self._executor, self.compiled, grammar)
        try:
            compiled = await asyncio.wait_for(future, COMPILE_SECONDS)
        except TimeoutError:
            raise RequestError(
                f"The schema of '{param}' took longer than {COMPILE_SECONDS:g} s to compile; simplify it.",
                param,
                code="schema_too_complex",
            ) from None
        except ValueError as error:
            raise RequestError(
                f"The schema of '{param}' is not supported: {str(error).splitlines()[0][:500]}",
                param,
                code="unsupported_schema",
            ) from None
        closing = None
        if constraint.kind == "json" or constraint.required:  # made once, off the event loop (~1 s)
            closing = self._closing or await asyncio.get_running_loop().run_in_executor(self._executor, self.closing)
        return Guide(compiled.deep_copy(), closing)


def allowed(matcher, width: int) -> torch.Tensor:
    """The tokens the matcher allows next, as a boolean mask over `width` logits (logits beyond
    the tokenizer's vocabulary are never allowed)."""
    words = torch.frombuffer(bytearray(matcher.compute_bitmask()), dtype=torch.int32)
    bits = ((words.unsqueeze(1) >> torch.arange(32, dtype=torch.int32)) & 1).flatten().bool()
    if bits.numel() >= width:
        return bits[:width]
    return torch.cat([bits, torch.zeros(width - bits.numel(), dtype=torch.bool)])
