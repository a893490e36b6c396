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
    if "pooling" not in vllm_args:
        vllm_args = [*vllm_args, *tool_arguments(Path(weights))]
    command = [args.python, "-m", "vllm.entrypoints.openai.api_server", "--model", str(weights), *vllm_args]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # vLLM's virtualenv, not ours
    os.execve(args.python, command, env)  # noqa: S606 - our own argv; exec keeps the pid the agent watches


def tool_arguments(weights: Path) -> list[str]:
    """vLLM's options for tools: calls read in the <tool_call> format our runtime's grammar writes
    (vLLM's hermes parser) with their arguments constrained, tools left out under tool_choice none
    (as our runtime does), and, for
    a model whose template does not know tools, a template with our runtime's fallback before it,
    so both engines show the model the same prompt."""
    from transformers import AutoTokenizer

    from serving.runtime import tool_calls

    options = ["--enable-auto-tool-choice", "--tool-call-parser", "hermes", "--exclude-tools-when-tool-choice-none"]
    # Arguments always under their tool's schema, as on our runtime (vLLM's default pins them only
    # for tools marked strict, and left a forced call's arguments free).
    options += ["--tool-strict-level", "parameter"]
    tokenizer = AutoTokenizer.from_pretrained(weights)
    if tokenizer.chat_template and not tool_calls.template_knows_tools(tokenizer):
        template = weights / "maas_tools_template.jinja"
        text = tool_calls.fallback_template(tokenizer.chat_template, tool_calls.renders_tool_turns(tokenizer))
        partial = template.with_suffix(f".{os.getpid()}.partial")  # engines starting together each write whole
        partial.write_text(text)
        partial.replace(template)
        options += ["--chat-template", str(template)]
    return options


if __name__ == "__main__":
    main()
