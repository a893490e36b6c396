"""blocks.c, compiled on the machine that serves (for its own instruction set) and loaded with ctypes.

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
from pathlib import Path

import torch

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("blocks.c")
FLAGS = ["-O3", "-march=native", "-std=gnu11", "-fopenmp", "-fPIC", "-shared"]
_P, _I, _INT = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int


class Kernels:
    def __init__(self, library: ctypes.CDLL):
        self._q4 = library.maas_blocks4_matmul
        self._q4.argtypes = [_P, _I, _I, _P, _P, _P, _I, _P, _INT, _INT]
        self._q4.restype = None
        self._q8 = library.maas_blocks8_matmul
        self._q8.argtypes = [_P, _I, _I, _P, _P, _I, _P, _INT, _INT]
        self._q8.restype = None

    def matmul(self, blocks, x: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """x [M, K] float32 times the blocks' weight [N, K] transposed: a new [M, N], or added into `out`."""
        x = x.contiguous()
        m, k = x.shape
        n = blocks.q.shape[0]
        add = out is not None
        if out is None:
            out = torch.empty((m, n), dtype=torch.float32)
        threads = torch.get_num_threads()
        # ctypes releases the GIL for the call: the server's event loop runs meanwhile.
        if blocks.bits == 4:
            self._q4(
                x.data_ptr(), m, k, blocks.q.data_ptr(), blocks.scale.data_ptr(), blocks.offset.data_ptr(),
                n, out.data_ptr(), add, threads,
            )  # fmt: skip
        else:
            self._q8(x.data_ptr(), m, k, blocks.q.data_ptr(), blocks.scale.data_ptr(), n, out.data_ptr(), add, threads)
        return out


def _compiler() -> str | None:
    return shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc")


def _key(compiler: str) -> str:
    version = subprocess.run([compiler, "--version"], capture_output=True, text=True, check=False).stdout
    try:
        cpu = next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags"))
    except (OSError, StopIteration):
        cpu = os.uname().machine
    parts = [SOURCE.read_bytes(), version.encode(), " ".join(FLAGS).encode(), cpu.encode()]
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
                [compiler, *FLAGS, "-o", str(staging), str(SOURCE)], capture_output=True, text=True, check=False
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
