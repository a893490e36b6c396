"""python -m serving.engine_vllm VLLM_PYTHON --model-source JSON --cache-dir DIR -- VLLM_ARGS...

Starts vLLM's OpenAI server on the model's safetensors weights: a GGUF model is dequantized once
into the model cache first (with our loader, in this virtualenv, which has the tools vLLM's lacks),
then this process becomes vLLM's (exec), keeping its pid, its environment and its tie to the node
agent's life. Imports no Django."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    ours, vllm_args = (argv[: argv.index("--")], argv[argv.index("--") + 1 :]) if "--" in argv else (argv, [])
    parser = argparse.ArgumentParser(prog="python -m serving.engine_vllm")
    parser.add_argument("python")
    parser.add_argument("--model-source", required=True)
    parser.add_argument("--cache-dir", required=True)
    args = parser.parse_args(ours)
    from catalog.loader import load_model, resolve_source
    from catalog.loader.load import cached_weights

    source = resolve_source(json.loads(args.model_source))
    weights = cached_weights(source, Path(args.cache_dir))
    if weights is None:
        load_model(source, Path(args.cache_dir))  # writes the safetensors cache
        weights = cached_weights(source, Path(args.cache_dir))
    if weights is None:
        sys.exit(f"the model's weights could not be written as safetensors under {args.cache_dir}")
    command = [args.python, "-m", "vllm.entrypoints.openai.api_server", "--model", str(weights), *vllm_args]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # vLLM's virtualenv, not ours
    os.execve(args.python, command, env)  # noqa: S606 - our own argv; exec keeps the pid the agent watches


if __name__ == "__main__":
    main()
