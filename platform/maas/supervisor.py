"""A small process supervisor for the embedded default (`make run`): starts every process of the
platform, prefixes their output, restarts one that dies (with back-off), and on Ctrl-C or
SIGTERM stops them all — SIGTERM to each process group, SIGKILL after a grace period."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field

from compute.processes import die_with_parent


@dataclass
class Program:
    name: str
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)  # added to the supervisor's environment
    # What the kernel sends it if the supervisor dies without stopping it (killed, OOM): a platform
    # that is gone must not leave a process holding accelerators.
    death_signal: int = signal.SIGTERM
    process: subprocess.Popen | None = None
    restarts: list[float] = field(default_factory=list)
    next_start: float = 0.0


class Supervisor:
    GRACE_SECONDS = 15
    RESTART_WINDOW = 60
    MAX_RESTARTS_IN_WINDOW = 5

    def __init__(self, programs: list[Program], env: dict[str, str], cwd: str):
        self.programs, self.env, self.cwd = programs, env, cwd
        self.stopping = threading.Event()
        self._print_lock = threading.Lock()

    def say(self, name: str, line: str) -> None:
        with self._print_lock:
            sys.stdout.write(f"{name:>8} | {line}")
            if not line.endswith("\n"):
                sys.stdout.write("\n")
            sys.stdout.flush()

    def start(self, program: Program) -> None:
        program.process = subprocess.Popen(
            program.argv,
            cwd=self.cwd,
            env={**self.env, **program.env},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            text=True,
            bufsize=1,
            preexec_fn=die_with_parent(program.death_signal),
        )
        threading.Thread(target=self._pump, args=(program, program.process), daemon=True).start()

    def _pump(self, program: Program, process: subprocess.Popen) -> None:
        for line in process.stdout:
            self.say(program.name, line)

    def run(self, on_started=None) -> int:
        signal.signal(signal.SIGINT, self._request_stop)
        signal.signal(signal.SIGTERM, self._request_stop)
        for program in self.programs:
            self.start(program)
        if on_started:
            threading.Thread(target=on_started, daemon=True).start()
        failed = False
        while not self.stopping.is_set():
            for program in self.programs:
                if program.process and program.process.poll() is not None:
                    failed = self._handle_exit(program) or failed
                elif program.process is None and time.monotonic() >= program.next_start:
                    self.start(program)
            self.stopping.wait(0.5)
        self.stop_all()
        return 1 if failed else 0

    def _handle_exit(self, program: Program) -> bool:
        code = program.process.returncode
        program.process = None
        now = time.monotonic()
        program.restarts = [t for t in program.restarts if now - t < self.RESTART_WINDOW] + [now]
        if len(program.restarts) > self.MAX_RESTARTS_IN_WINDOW:
            self.say("run", f"{program.name} keeps exiting (last code {code}); stopping everything.")
            self.stopping.set()
            return True
        delay = 2 ** (len(program.restarts) - 1)
        self.say("run", f"{program.name} exited with code {code}; restarting in {delay}s.")
        program.next_start = now + delay
        return False

    def _request_stop(self, signum, frame) -> None:
        if self.stopping.is_set():
            return
        self.say("run", "stopping all processes...")
        self.stopping.set()

    def stop_all(self) -> None:
        alive = [p for p in self.programs if p.process and p.process.poll() is None]
        for program in alive:
            # The main process only: Celery and uvicorn stop their own children gracefully.
            with contextlib.suppress(ProcessLookupError):
                os.kill(program.process.pid, signal.SIGTERM)
        deadline = time.monotonic() + self.GRACE_SECONDS
        for program in alive:
            try:
                program.process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self.say("run", f"{program.name} did not stop in {self.GRACE_SECONDS}s; killing it.")
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(program.process.pid, signal.SIGKILL)
                program.process.wait()
        self.say("run", "all processes stopped.")
