"""Serving: the OpenAI-compatible gateway (under /v1/), the model runtime and endpoints."""
