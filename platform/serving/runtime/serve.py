"""The runtime process: the HTTP server on a thread, the engine's (or embedder's) loop on the main
thread, the one that loaded the model.

Why this way round: every thread that runs PyTorch's or the block kernels' parallel regions gets
an OpenMP team of its own, and once a process holds more OpenMP threads than CPUs, libgomp stops
spinning between regions and puts its workers to sleep after each one. A decode step has about a
hundred and twenty such regions; with the model loaded on the main thread and the loop on a
second one, the process held two teams, slept and woke ~270 times a token, and one stream ran
~30 % slower. With the loop on the thread that loaded the model there is one team.
"""

from __future__ import annotations

import logging
import signal
import sys
import threading

log = logging.getLogger("serving.runtime")
# What computes the model (serving.runtime.runners builds it); here, where the command line reads
# them without importing PyTorch.
DECODERS = ("auto", "native", "transformers")


class Loop:
    """A loop that runs until `stop`: on a thread of its own (`start`, as tests do) or on the
    caller's (`run`, as `serve` does). Subclasses write `_loop`, which returns once `_stop` is set."""

    thread_name = "loop"

    def __init__(self):
        self._stop = threading.Event()
        self._running = False
        self._thread = threading.Thread(target=self.run, name=self.thread_name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(10)

    def alive(self) -> bool:
        return self._running

    def run(self) -> None:
        self._running = True
        try:
            self._loop()
        finally:
            self._running = False

    def _loop(self) -> None:
        raise NotImplementedError


def serve(app, loop: Loop, *, host: str, port: int) -> None:
    """Serve `app` until SIGTERM or SIGINT (a second SIGINT forces it), running `loop` meanwhile.
    Requests in flight finish before the loop stops, as they need it to."""
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="info", access_log=False))

    def http() -> None:
        try:
            server.run()
        finally:
            loop.stop()  # the server has ended (or never started): so does the loop

    def on_signal(signum, frame) -> None:
        if server.should_exit and signum == signal.SIGINT:
            server.force_exit = True
        server.should_exit = True

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, on_signal)
    thread = threading.Thread(target=http, name="http", daemon=True)
    thread.start()
    loop.run()
    thread.join()
    if not server.started:
        log.error("the HTTP server did not start on %s:%s", host, port)
        sys.exit(1)
