"""blocks.c, attention.c and lora.c, compiled on the machine that serves (for its own instruction
set) and loaded with ctypes.

The library is built once per source, compiler and CPU into the model cache directory (a fraction
of a second with a C compiler), written beside its final name and renamed into place, so that
processes starting together never load half a file. It links the OpenMP runtime PyTorch has
already loaded (same soname), so its threads and PyTorch's are one pool. Where no compiler works,
`load` says why and returns None, and the decoder reads dense weights instead.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import shutil
import subprocess
import uuid
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)

SOURCES = [Path(__file__).with_name(name) for name in ("blocks.c", "attention.c", "lora.c")]
FLAGS = ["-O3", "-march=native", "-std=gnu11", "-fopenmp", "-fPIC", "-shared"]
_P, _I, _INT, _F = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int, ctypes.c_float
IDENTITY, RMS_NORM, SWIGLU = 0, 1, 2  # what the matmul applies to its input first


@dataclass(frozen=True)
class Input:
    """What a matmul applies to its input first: nothing, RMSNorm with the weight `norm`, or SwiGLU
    of its two halves (the input is then [M, 2K])."""

    norm: torch.Tensor | None = None
    eps: float = 0.0
    swiglu: bool = False

    @property
    def mode(self) -> int:
        return RMS_NORM if self.norm is not None else SWIGLU if self.swiglu else IDENTITY

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """The same in PyTorch (weights without blocks)."""
        if self.norm is not None:
            return F.rms_norm(x, (x.shape[-1],), self.norm, self.eps)
        if self.swiglu:
            gate, up = x.chunk(2, dim=-1)
            return F.silu(gate) * up
        return x


PLAIN, SWIGLU_INPUT = Input(), Input(swiglu=True)


class Kernels:
    def __init__(self, library: ctypes.CDLL):
        self._q4 = library.maas_blocks4_matmul
        self._q4.argtypes = [_P, _I, _I, _P, _P, _P, _I, _P, _INT, _INT, _INT, _P, _F, _P]
        self._q4.restype = None
        self._q8 = library.maas_blocks8_matmul
        self._q8.argtypes = [_P, _I, _I, _P, _P, _I, _P, _INT, _INT, _INT, _P, _F, _P]
        self._q8.restype = None
        self._attend = library.maas_attend
        self._attend.argtypes = [_P, _I, _I, _I, _I, _P, _P, _P, _P, _P, _I, _P, _INT]
        self._attend.restype = None
        self._lora = library.maas_lora
        self._lora.argtypes = [_P, _I, _I, _P, _P, _P, _P, _I, _I, _P, _I, _I]
        self._lora.restype = None

    def matmul(
        self, blocks, x: torch.Tensor, out: torch.Tensor | None = None, first: Input = PLAIN, kept=None
    ) -> torch.Tensor:
        """first(x) [M, K] float32 times the blocks' weight [N, K] transposed: a new [M, N], or added
        into `out`. `kept` [M, K], if given, receives first(x)."""
        x = x.contiguous()
        m = x.shape[0]
        n, k = blocks.shape
        add = out is not None
        if out is None:
            out = torch.empty((m, n), dtype=torch.float32)
        mode = first.mode
        if mode != IDENTITY and kept is None:
            kept = torch.empty((m, k), dtype=torch.float32)
        weight = first.norm.data_ptr() if first.norm is not None else None
        staged = kept.data_ptr() if kept is not None else None
        eps = first.eps
        threads = torch.get_num_threads()
        # ctypes releases the GIL for the call: the server's event loop runs meanwhile.
        if blocks.bits == 4:
            self._q4(
                x.data_ptr(), m, k, blocks.q.data_ptr(), blocks.scale.data_ptr(), blocks.offset.data_ptr(),
                n, out.data_ptr(), add, threads, mode, weight, eps, staged,
            )  # fmt: skip
        else:
            self._q8(
                x.data_ptr(), m, k, blocks.q.data_ptr(), blocks.scale.data_ptr(),
                n, out.data_ptr(), add, threads, mode, weight, eps, staged,
            )  # fmt: skip
        return out

    def attend(self, qkv, positions, cos, sin, keys, values, heads: int, kv_heads: int) -> torch.Tensor:
        """A decode step's attention (attention.c): rotary embedding, the new keys and values into
        the slots at `positions`, each row's heads over its keys. Returns [rows, heads·head_dim]."""
        rows, _, capacity, head_dim = keys.shape
        out = torch.empty((rows, heads * head_dim), dtype=torch.float32)
        self._attend(
            qkv.data_ptr(), rows, heads, kv_heads, head_dim, positions.data_ptr(), cos.data_ptr(), sin.data_ptr(),
            keys.data_ptr(), values.data_ptr(), capacity, out.data_ptr(), torch.get_num_threads(),
        )  # fmt: skip
        return out

    def lora(self, x, slots, a, bt, scale, y, columns: slice) -> None:
        """y[:, columns] += each row's adapter's delta (lora.c): `slots` [rows] int64 (0: none), A
        [slots, R, K], B transposed [slots, R, N]."""
        x = x.contiguous()
        rows, k = x.shape
        _, rank, out = bt.shape
        self._lora(
            x.data_ptr(), rows, k, slots.data_ptr(), a.data_ptr(), bt.data_ptr(), scale.data_ptr(),
            rank, out, y.data_ptr(), y.shape[1], columns.start,
        )  # fmt: skip


def _compiler() -> str | None:
    return shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc")


def _key(compiler: str) -> str:
    version = subprocess.run([compiler, "--version"], capture_output=True, text=True, check=False).stdout
    try:
        cpu = next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags"))
    except (OSError, StopIteration):
        cpu = os.uname().machine
    parts = [*(source.read_bytes() for source in SOURCES), version.encode(), " ".join(FLAGS).encode(), cpu.encode()]
    return hashlib.sha256(b"\0".join(parts)).hexdigest()[:16]


def load(cache_dir: Path) -> Kernels | None:
    """The compiled kernels, built into `cache_dir` if they are not there yet; None (logged) if they
    cannot be built or loaded here."""
    compiler = _compiler()
    if compiler is None:
        log.warning("no C compiler (cc, gcc): the decoder reads dense weights")
        return None
    target = Path(cache_dir) / "native" / f"blocks-{_key(compiler)}.so"
    try:
        if not target.is_file():
            target.parent.mkdir(parents=True, exist_ok=True)
            staging = target.with_name(f".{target.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}")
            built = subprocess.run(
                [compiler, *FLAGS, "-o", str(staging), *map(str, SOURCES), "-lm"],
                capture_output=True,
                text=True,
                check=False,
            )
            if built.returncode != 0:
                log.warning("the block kernels did not compile; the decoder reads dense weights:\n%s", built.stderr)
                staging.unlink(missing_ok=True)
                return None
            os.replace(staging, target)
        return Kernels(ctypes.CDLL(str(target)))
    except OSError as error:
        log.warning("the block kernels could not be loaded (%s); the decoder reads dense weights", error)
        return None
