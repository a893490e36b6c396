"""The OpenAI-compatible gateway under /v1/: async views on the hot path, Bearer API keys,
OpenAI error bodies."""
