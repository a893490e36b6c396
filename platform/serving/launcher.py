"""How a node agent runs an engine process: behind a small interface, so that a launcher that
creates Kubernetes Deployments (through the official client) can stand where this local one
stands. The local launcher starts each engine in a session of its own, tied to the agent's life
(the kernel kills it when the agent dies, so a dead agent holds no accelerator), and stops it with
SIGTERM, then SIGKILL to its whole group after a grace period."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from typing import Protocol

from compute.processes import die_with_parent
from serving.engines import EngineSpec


@dataclass
class Handle:
    name: str
    pid: int
    port: int
    process: subprocess.Popen | None = None


class Launcher(Protocol):
    def free_port(self, host: str) -> int: ...

    def start(self, spec: EngineSpec, port: int) -> Handle: ...

    def exit_code(self, handle: Handle) -> int | None:
        """None while it runs."""

    def stop(self, handle: Handle, grace: float) -> None: ...


class LocalLauncher:
    def free_port(self, host: str) -> int:
        with socket.socket() as probe:
            probe.bind((host, 0))
            return probe.getsockname()[1]

    def start(self, spec: EngineSpec, port: int) -> Handle:
        log = open(spec.log_path, "ab") if spec.log_path else subprocess.DEVNULL  # noqa: SIM115
        try:
            process = subprocess.Popen(
                spec.argv,
                env={**os.environ, **spec.env},
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=die_with_parent(signal.SIGKILL),
            )
        finally:
            if log is not subprocess.DEVNULL:
                log.close()
        return Handle(spec.name, process.pid, port, process)

    def exit_code(self, handle: Handle) -> int | None:
        return handle.process.poll() if handle.process else 0

    def stop(self, handle: Handle, grace: float) -> None:
        process = handle.process
        if process is None or process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def log_tail(spec_log, lines: int = 20) -> str:
    """The end of an engine's log, for the operator's log."""
    try:
        with open(spec_log, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            handle.seek(max(0, handle.tell() - 8192))
            return b"\n".join(handle.read().splitlines()[-lines:]).decode(errors="replace")
    except OSError:
        return ""
