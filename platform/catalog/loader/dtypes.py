"""The weights' type a model is served in, with "auto" resolved on the machine that loads it.

A decode step reads every weight once, so bfloat16 halves what a token costs on a CPU that
computes in BF16 natively (AVX-512 BF16 or AMX): 1.6-1.9x the float32 figures on the demo model
(bench/serving_engines.py). Where BF16 is only emulated, the conversions cost more than the bytes
save (0.97x at one stream, 0.83x at eight, on an AVX-512 CPU without BF16), so "auto" stays in
float32 there. On a GPU, bfloat16 where it has it, else float16.

"auto" is an operator's choice, not the default: in bfloat16 a row's greedy answer changes with
what else is in its batch (the suite's hostile-batch test fails with it), and float32 keeps every
tenant's answer the same whoever shares the batch.
"""

from __future__ import annotations

from pathlib import Path

DTYPES = ("float32", "bfloat16", "float16")
NATIVE_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})
CPUINFO = Path("/proc/cpuinfo")


def cpu_flags(cpuinfo: Path | None = None) -> frozenset[str]:
    """The CPU's feature flags (Linux); none where they cannot be read."""
    try:
        text = (cpuinfo or CPUINFO).read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.partition(":")[2].split())
    return frozenset()


def resolve_dtype(dtype: str, device: str = "cpu") -> str:
    """`dtype` itself, or for "auto" the fastest type on this machine's `device`."""
    if dtype != "auto":
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be auto or one of {', '.join(DTYPES)}, not {dtype!r}")
        return dtype
    if device.startswith("cuda"):
        import torch

        return "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
    return "bfloat16" if cpu_flags() & NATIVE_BF16_FLAGS else "float32"
