"""The LoRA trainer: a standalone process (`python -m fine_tuning.trainer --config job.json`).

Imports no Django and nothing of the platform but the model loader and the data rules, so it runs
alone on a GPU host. It prints one JSON object per line (started, metrics, validation,
checkpoint, done, error), writes checkpoints it can resume from (adapter, optimizer, scheduler and
RNG state as safetensors and JSON — never pickle), and stops cleanly on SIGTERM.
"""
