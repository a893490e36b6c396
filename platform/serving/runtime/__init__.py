"""The model runtime: one base model plus LoRA adapters behind an OpenAI-compatible HTTP API.

Runs alone (`python -m serving.runtime ...`) on a GPU host; imports no Django and nothing of the
platform but the model loader. The gateway speaks only the runtime's HTTP protocol, which is
vLLM's, so a vLLM server can stand where this runtime stands.
"""
